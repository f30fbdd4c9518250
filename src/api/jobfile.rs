//! The job-list file: a JSON array of jobs to submit at once, in the native or the seed form.
//!
//! Each element is one job, in either form (they may be mixed):
//!
//! - **native**: the [`JobSpec`] JSON (`{"name": .., "argv": [..], "cores": {"min":1,"max":2},
//!   ..}`), recognised by its `argv` key;
//! - **seed**: `{"name": .., "command": "..", "resources": {"cpu": 4, "memory": "8G",
//!   "gpu": 1}, "priority": 1, "output": ".."}`, recognised by its `command` key:
//!   - `command`: a string runs as `["/bin/sh", "-c", command]`; an array of strings is the argv;
//!   - `resources.cpu`: `N` (exactly N cores), or a string `"N"` or `"MIN:MAX"`; default 1;
//!   - `resources.memory`: bytes, or a string with a unit (`"8G"`, `"512m"`);
//!   - `resources.gpu`: a count, a string `"2"`, `"A100"` or `"A100:2"`, or
//!     `{"count": 2, "variant": "A100"}`;
//!   - `output`: one file for both stdout and stderr;
//!   - `job_id`: the daemon assigns job ids, so it is not kept as an id: it becomes the job's
//!     name when `name` is missing. Without either, the name is the command's first word
//!     (its file name: `python` for `"python train.py"`).
//!
//! Unknown keys are refused in both forms (a typo must not silently drop a limit). Errors name
//! the job's index (from 0) and name, and the field at fault.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::model::job::{JobError, JobSpec};
use crate::model::resources::{Bytes, CoreRange, GpuRequest};

/// The shell a seed-form `command` string runs under.
pub const SHELL: &str = "/bin/sh";

/// Keys of the seed form, for error messages.
const SEED_KEYS: &str = "name, job_id, command, resources, priority, output";
const RESOURCE_KEYS: &str = "cpu, memory, gpu";

/// Why a job-list file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JobFileError {
    #[error("cannot read job file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{origin}: not a JSON array of jobs: {source}")]
    Syntax {
        origin: String,
        source: serde_json::Error,
    },
    #[error("{origin}: {job}: {field}: {message}")]
    Job {
        origin: String,
        job: JobRef,
        field: String,
        message: String,
    },
}

/// Which job of the file an error is about: its index and, when known, its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRef {
    pub index: usize,
    pub name: Option<String>,
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.index)?;
        if let Some(name) = &self.name {
            write!(f, " ({})", crate::model::text::quoted(name))?;
        }
        Ok(())
    }
}

/// Reads and parses the job list at `path`.
pub fn load(path: &Path) -> Result<Vec<JobSpec>, JobFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| JobFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_from(&text, &path.display().to_string())
}

/// Parses a job list held in memory (e.g. received over the socket).
pub fn parse(text: &str) -> Result<Vec<JobSpec>, JobFileError> {
    parse_from(text, "job list")
}

fn parse_from(text: &str, origin: &str) -> Result<Vec<JobSpec>, JobFileError> {
    let items: Vec<Value> = serde_json::from_str(text).map_err(|source| JobFileError::Syntax {
        origin: origin.to_string(),
        source,
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            job(item, index).map_err(|(job, field, message)| JobFileError::Job {
                origin: origin.to_string(),
                job,
                field,
                message,
            })
        })
        .collect()
}

type Failure = (JobRef, String, String);

fn job(item: Value, index: usize) -> Result<JobSpec, Failure> {
    let Value::Object(obj) = item else {
        let fail = JobRef { index, name: None };
        return Err((fail, "(job)".into(), "expected a JSON object".into()));
    };
    let name = obj.get("name").and_then(Value::as_str).map(str::to_string);
    let native = obj.contains_key("argv");
    let spec = if native {
        let at = JobRef { index, name };
        native_job(obj).map_err(|(field, message)| (at, field, message))?
    } else if obj.contains_key("command") {
        let at = JobRef {
            index,
            name: name
                .or_else(|| obj.get("job_id").map(id_text))
                .or_else(|| Some(command_name(&obj["command"])).filter(|n| !n.is_empty())),
        };
        seed_job(obj).map_err(|(field, message)| (at, field, message))?
    } else {
        let at = JobRef { index, name };
        return Err((
            at,
            "(job)".into(),
            "neither the native form (has \"argv\") nor the seed form (has \"command\")".into(),
        ));
    };
    spec.validate().map_err(|e| {
        let at = JobRef {
            index,
            name: Some(spec.name.clone()),
        };
        (at, invalid_field(&e, native), e.to_string())
    })?;
    Ok(spec)
}

/// The field a validation error is about, in the form the file used.
fn invalid_field(e: &JobError, native: bool) -> String {
    let field = match e {
        JobError::EmptyArgv => return if native { "argv" } else { "command" }.into(),
        JobError::Cores { .. } => return if native { "cores" } else { "resources.cpu" }.into(),
        JobError::MemoryFloor { .. } => {
            return if native { "memory" } else { "resources.memory" }.into();
        }
        JobError::Nul { field } => field.as_str(),
        JobError::TooLong { field, .. }
        | JobError::EmptyPath { field }
        | JobError::Control { field, .. } => field,
        JobError::Limit(_) => "rlimits",
        JobError::EmptyName => "name",
        JobError::EnvName { .. } => "env",
        JobError::BadId { .. } => "(job)",
        JobError::Origin => "origin",
        JobError::ZeroTimeLimit => "time_limit",
    };
    if native {
        return field.to_string();
    }
    match field {
        "stdout" | "stderr" => "output".to_string(),
        f if f.starts_with("argv") => "command".to_string(),
        f => f.to_string(),
    }
}

fn native_job(obj: Map<String, Value>) -> Result<JobSpec, (String, String)> {
    serde_json::from_value::<JobSpec>(Value::Object(obj.clone())).map_err(|e| {
        let message = e.to_string();
        let field = bad_native_field(&obj)
            .or_else(|| missing_field(&message))
            .unwrap_or_else(|| "(job)".into());
        (field, message)
    })
}

/// `name` from serde's "missing field `name`".
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next().map(str::to_string)
}

/// Finds the field serde refused by loading each field alone next to a minimal valid job
/// (serde_json's errors say what is wrong but not where).
fn bad_native_field(obj: &Map<String, Value>) -> Option<String> {
    obj.iter().find_map(|(key, value)| {
        let mut probe = Map::new();
        probe.insert("name".into(), Value::from("probe"));
        probe.insert("argv".into(), Value::from(vec!["probe"]));
        probe.insert(key.clone(), value.clone());
        serde_json::from_value::<JobSpec>(Value::Object(probe))
            .is_err()
            .then(|| key.clone())
    })
}

fn id_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn seed_job(obj: Map<String, Value>) -> Result<JobSpec, (String, String)> {
    let bad = |field: &str, message: String| (field.to_string(), message);
    if let Some(key) = obj
        .keys()
        .find(|k| !SEED_KEYS.split(", ").any(|s| s == k.as_str()))
    {
        return Err(bad(
            key,
            format!("unknown field; the seed form has {SEED_KEYS}"),
        ));
    }
    let argv = match &obj["command"] {
        Value::String(cmd) => vec![SHELL.to_string(), "-c".to_string(), cmd.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("command", "an array command must hold only strings".into()))?,
        _ => {
            return Err(bad(
                "command",
                "expected a shell command string or an array of strings".into(),
            ));
        }
    };
    let mut spec = JobSpec::new(argv);
    spec.name = match (obj.get("name"), obj.get("job_id")) {
        (Some(Value::String(n)), _) => n.clone(),
        (Some(_), _) => return Err(bad("name", "expected a string".into())),
        (None, Some(id @ (Value::String(_) | Value::Number(_)))) => id_text(id),
        (None, Some(_)) => return Err(bad("job_id", "expected a string or a number".into())),
        (None, None) => command_name(&obj["command"]),
    };
    if let Some(p) = obj.get("priority") {
        spec.priority = p
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| bad("priority", format!("expected a whole number, got {p}")))?;
    }
    if let Some(out) = obj.get("output") {
        let path = out
            .as_str()
            .ok_or_else(|| bad("output", "expected a file path string".into()))?;
        spec.stdout = Some(path.into());
        spec.stderr = Some(path.into());
    }
    match obj.get("resources") {
        None => {}
        Some(Value::Object(res)) => resources(res, &mut spec)?,
        Some(_) => {
            return Err(bad(
                "resources",
                format!("expected an object with {RESOURCE_KEYS}"),
            ));
        }
    }
    Ok(spec)
}

/// The first word of a shell command, as a file name: `python` for `python train.py`.
fn command_name(command: &Value) -> String {
    let first = match command {
        Value::String(s) => s.split_whitespace().next().unwrap_or_default().to_string(),
        Value::Array(items) => items
            .first()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    };
    first.rsplit('/').next().unwrap_or_default().to_string()
}

fn resources(res: &Map<String, Value>, spec: &mut JobSpec) -> Result<(), (String, String)> {
    for (key, value) in res {
        let field = format!("resources.{key}");
        let bad = |message: String| (field.clone(), message);
        match key.as_str() {
            "cpu" => {
                spec.cores = match value {
                    Value::Number(n) => n
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .filter(|&n| n >= 1)
                        .map(CoreRange::exactly)
                        .ok_or_else(|| bad(format!("expected a core count >= 1, got {n}")))?,
                    Value::String(s) => s.parse().map_err(|e| bad(format!("{e}")))?,
                    other => return Err(bad(format!("expected N or \"MIN:MAX\", got {other}"))),
                };
            }
            "memory" => {
                let bytes: Bytes =
                    serde_json::from_value(value.clone()).map_err(|e| bad(e.to_string()))?;
                spec.memory = Some(bytes);
            }
            "gpu" => spec.gpus = gpus(value).map_err(bad)?,
            _ => return Err(bad(format!("unknown resource; known: {RESOURCE_KEYS}"))),
        }
    }
    Ok(())
}

fn gpus(value: &Value) -> Result<GpuRequest, String> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(|count| GpuRequest {
                count,
                variant: None,
            })
            .ok_or_else(|| format!("expected a GPU count >= 0, got {n}")),
        Value::String(s) => s.parse().map_err(|e| format!("{e}")),
        Value::Object(_) => {
            let req: GpuRequest =
                serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
            match req.variant.as_deref() {
                // Same name rules as the text form.
                Some(v) => format!("{v}:{}", req.count)
                    .parse()
                    .map_err(|e| format!("{e}")),
                None => Ok(req),
            }
        }
        other => Err(format!(
            "expected a count, \"VARIANT:N\" or {{\"count\", \"variant\"}}, got {other}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(json: &str) -> Result<JobSpec, JobFileError> {
        parse(&format!("[{json}]")).map(|mut v| v.remove(0))
    }

    fn err(json: &str) -> String {
        one(json).unwrap_err().to_string()
    }

    #[test]
    fn seed_form_maps_every_field() {
        let s = one(
            r#"{"job_id":"123","command":"python script.py","resources":{"cpu":4,"memory":"8G","gpu":1},"priority":1,"output":"/tmp/o.log"}"#,
        )
        .unwrap();
        assert_eq!(s.name, "123");
        assert_eq!(s.argv, ["/bin/sh", "-c", "python script.py"]);
        assert_eq!(s.cores, CoreRange::exactly(4));
        assert_eq!(s.memory, Some(Bytes(8 << 30)));
        assert_eq!(s.gpus.count, 1);
        assert_eq!(s.priority, 1);
        assert_eq!(s.stdout.as_deref(), Some(Path::new("/tmp/o.log")));
        assert_eq!(s.stderr, s.stdout);
    }

    #[test]
    fn seed_form_alternatives() {
        let s =
            one(r#"{"command":["/usr/bin/env","true"],"resources":{"cpu":"1:4","gpu":"A100:2"}}"#)
                .unwrap();
        assert_eq!(s.name, "env");
        assert_eq!(s.argv, ["/usr/bin/env", "true"]);
        assert_eq!(s.cores, CoreRange { min: 1, max: 4 });
        assert_eq!(s.gpus.variant.as_deref(), Some("A100"));
        let s = one(r#"{"name":"n","job_id":7,"command":"x","resources":{"gpu":{"count":2,"variant":"T4"}}}"#)
            .unwrap();
        assert_eq!(s.name, "n");
        assert_eq!((s.gpus.count, s.gpus.variant.as_deref()), (2, Some("T4")));
        assert_eq!(one(r#"{"job_id":7,"command":"x"}"#).unwrap().name, "7");
        assert_eq!(
            one(r#"{"command":"/opt/bin/run --fast"}"#).unwrap().name,
            "run"
        );
    }

    #[test]
    fn native_form_is_the_job_spec() {
        let s =
            one(r#"{"name":"t","argv":["true"],"cores":{"min":1,"max":2},"priority":3}"#).unwrap();
        assert_eq!(s.name, "t");
        assert_eq!(s.cores, CoreRange { min: 1, max: 2 });
    }

    #[test]
    fn errors_name_the_job_and_the_field() {
        let e = err(r#"{"name":"a","command":"x","resources":{"cpu":0}}"#);
        assert!(
            e.starts_with("job list: job 0 (\"a\"): resources.cpu:"),
            "{e}"
        );
        let e = err(r#"{"job_id":"j9","command":"x","resources":{"memory":"lots"}}"#);
        assert!(e.contains("job 0 (\"j9\"): resources.memory:"), "{e}");
        assert!(e.contains("\"lots\""), "{e}");
        let e = err(r#"{"command":"x","resources":{"gpu":"A100:x"}}"#);
        assert!(e.contains("resources.gpu: bad GPU request"), "{e}");
        let e = err(r#"{"command":"x","resources":{"disk":1}}"#);
        assert!(e.contains("resources.disk: unknown resource"), "{e}");
        let e = err(r#"{"command":"x","prio":2}"#);
        assert!(e.contains("prio: unknown field"), "{e}");
        let e = err(r#"{"command":"x","priority":"high"}"#);
        assert!(e.contains("priority: expected a whole number"), "{e}");
        let e = err(r#"{"command":7}"#);
        assert!(e.contains("command: expected"), "{e}");
        let e = err(r#"{"command":""}"#);
        assert!(e.contains("name: job name must not be empty"), "{e}");
        let e = err(r#"{"name":"n","argv":["x"],"cores":{"min":"two","max":2}}"#);
        assert!(e.contains("job 0 (\"n\"): cores:"), "{e}");
        let e = err(r#"{"name":"n","argv":["x"],"timeout":-3}"#);
        assert!(e.contains("timeout:") && e.contains("-3"), "{e}");
        let e = err(r#"{"name":"n","argv":["x"],"cpus":1}"#);
        assert!(e.contains("cpus:"), "{e}");
        let e = err(r#"{"name":"n","argv":[]}"#);
        assert!(e.contains("argv: job has no command"), "{e}");
        let e = err(r#"{"argv":["x"]}"#);
        assert!(e.contains("job 0: name: missing field `name`"), "{e}");
        let e = err(r#"{"command":"run x","resources":{"cpu":0}}"#);
        assert!(e.contains("job 0 (\"run\"): resources.cpu"), "{e}");
        let e = err(r#"{"name":"n"}"#);
        assert!(e.contains("neither the native form"), "{e}");
        let e = err("5");
        assert!(e.contains("job 0: (job): expected a JSON object"), "{e}");
    }

    #[test]
    fn the_index_counts_from_zero_and_names_the_bad_job() {
        let e = parse(r#"[{"command":"a"},{"name":"b","command":"b","resources":{"cpu":"3:1"}}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("job 1 (\"b\"): resources.cpu"), "{e}");
    }

    #[test]
    fn not_an_array_is_a_syntax_error() {
        assert!(matches!(parse("{}"), Err(JobFileError::Syntax { .. })));
        assert!(matches!(parse("[1,"), Err(JobFileError::Syntax { .. })));
        assert_eq!(parse("[]").unwrap(), Vec::<JobSpec>::new());
    }
}
