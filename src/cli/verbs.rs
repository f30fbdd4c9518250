//! The verbs that select jobs (`status`, `history`, `cancel`, `pause`, `resume`): ids, array
//! ids and `ARRAY_INDEX` names resolved against the daemon's job list, then shown or acted on.

use std::path::Path;
use std::process::ExitCode;

use crate::api::client::ClientError;
use crate::api::protocol::{self, Reply, Request};
use crate::model::array::JobRef;
use crate::model::job::JobId;

use super::status::{Filter, StatusArgs};
use super::{call, exit, format, now_ms, status as table, to_json, unexpected};

/// Every job the daemon knows.
fn list(socket: &Path) -> Result<Vec<protocol::JobStatus>, ClientError> {
    match call(socket, &Request::Status(protocol::Status { id: None }))? {
        Reply::Jobs { jobs } => Ok(jobs),
        other => Err(unexpected(other)),
    }
}

pub(super) fn status(socket: &Path, args: StatusArgs) -> Result<ExitCode, ClientError> {
    let mut jobs = if args.wants_detail() {
        // One job field by field; an array's id or ARRAY_INDEX goes through the list.
        match args.ids.first() {
            Some(JobRef::Job(id)) => {
                match call(socket, &Request::Status(protocol::Status { id: Some(*id) }))? {
                    Reply::Job { job } if job.task.is_none_or(|t| t.array != job.id) => {
                        print_detail(&job, args.json);
                        return Ok(ExitCode::SUCCESS);
                    }
                    Reply::Job { .. } => list(socket)?,
                    other => return Err(unexpected(other)),
                }
            }
            _ => list(socket)?,
        }
    } else {
        list(socket)?
    };
    let filter = args.filter();
    jobs.retain(|j| filter.matches(j));
    if args.wants_detail() && matches!(args.ids.first(), Some(JobRef::Task(..))) {
        match jobs.first() {
            Some(job) => print_detail(job, args.json),
            None => {
                eprintln!("lowsched: no job {}", args.ids[0]);
                return Ok(ExitCode::from(exit::ERROR));
            }
        }
    } else if args.json {
        println!("{}", to_json(&jobs));
    } else {
        print!("{}", table::table(&jobs, &args, now_ms()));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_detail(job: &protocol::JobStatus, json: bool) {
    if json {
        println!("{}", to_json(job));
    } else {
        print!("{}", format::job_detail(job, now_ms()));
    }
}

/// Applies `req` to each job `filter` selects: the ids as given, or with filters the daemon's
/// jobs that match. Goes on past a refusal (each is reported); exits 1 if any was refused.
pub(super) fn act(
    socket: &Path,
    filter: &Filter,
    req: fn(protocol::Target) -> Request,
    done: &str,
) -> Result<ExitCode, ClientError> {
    if filter.ids.is_empty() && !filter.has_filters() {
        eprintln!(
            "lowsched: name at least one job id, or select jobs with --state, --user or --name"
        );
        return Ok(ExitCode::from(exit::ERROR));
    }
    // The job list resolves array ids and ARRAY_INDEX names to the tasks' own ids.
    let jobs = list(socket)?;
    let mut failed = false;
    for r in &filter.ids {
        if !jobs.iter().any(|j| r.names(j.id, j.task)) {
            eprintln!("lowsched: no job {r}");
            failed = true;
        }
    }
    // An array's id acts on its tasks that can still change, as scancel does: its finished
    // tasks are no refusal.
    let whole_array = |j: &protocol::JobStatus| {
        j.task
            .is_some_and(|t| filter.ids.contains(&JobRef::Job(t.array)))
    };
    let ids: Vec<JobId> = jobs
        .iter()
        .filter(|j| filter.matches(j) && !(whole_array(j) && j.state.is_terminal()))
        .map(|j| j.id)
        .collect();
    if ids.is_empty() && !failed {
        eprintln!("lowsched: no job matched; nothing {done}");
    }
    for id in ids {
        match call(socket, &req(protocol::Target { id })) {
            Ok(Reply::Job { job }) => eprintln!("job {} {done} (now {})", job.id, job.state),
            Ok(other) => return Err(unexpected(other)),
            Err(e) => {
                eprintln!("lowsched: job {id}: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(exit::ERROR)
    } else {
        ExitCode::SUCCESS
    })
}
