//! Answers socket requests: submits go to the journal and the queue, reads come from the job
//! table and the monitors, and changes to running jobs go to the control loop.
//!
//! Authorization: anyone who can open the socket may submit (as themselves) and read every
//! job's status; only root or a job's owner may cancel, pause or resume it or see its
//! environment; only root may submit as another user.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::bounded;

use crate::api::protocol::{
    ErrorCode, MAX_POLL_MS, ProtocolError, Reply, Request, Response, Stats, Wait,
};
use crate::decide::policy::fit;
use crate::model::array::{ArrayTask, ENV_ARRAY_JOB_ID, ENV_ARRAY_TASK_ID};
use crate::model::credentials::Credentials;
use crate::model::job::{JobId, JobSpec};
use crate::store::journal::Owner;

use super::jobs::{JobRecord, JobTable, Staged};
use super::server::{Caller, Handler};
use super::shared::{Op, Shared, now};

/// How long a socket thread waits for the control loop to carry out a cancel, pause or resume.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

fn err(code: ErrorCode, msg: impl Into<String>) -> ProtocolError {
    ProtocolError::new(code, msg)
}

/// Refuses a job that waits for a job the daemon does not know (a typo would otherwise leave it
/// to be given up on at once).
fn check_dependencies(table: &JobTable, spec: &JobSpec) -> Result<(), ProtocolError> {
    match spec.dependencies.iter().find(|d| !table.knows(d.job)) {
        Some(d) => Err(err(
            ErrorCode::Invalid,
            format!("dependency {d}: no job {} is known", d.job),
        )),
        None => Ok(()),
    }
}

/// The daemon's request handler.
#[derive(Debug)]
pub struct RequestHandler {
    shared: Arc<Shared>,
}

/// Submits of one batch of requests, journaled but not yet durable.
#[derive(Default)]
struct Accepted {
    staged: Staged,
    /// Response slots: (index in the batch, ids of the request).
    slots: Vec<(usize, Vec<JobId>, bool)>,
    /// Users already resolved in this batch (by `--user` name; `None`: the caller).
    users: Vec<(Option<String>, Credentials)>,
}

impl RequestHandler {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Who a submission runs as: the caller, or (root only) the named user.
    fn credentials(
        &self,
        caller: &Caller,
        user: Option<&str>,
    ) -> Result<Credentials, ProtocolError> {
        match user {
            Some(name) => {
                let named = Credentials::by_name(name)
                    .map_err(|e| err(ErrorCode::Invalid, format!("--user {name}: {e}")))?;
                if caller.is_root() || named.uid == caller.uid {
                    Ok(named)
                } else {
                    Err(err(
                        ErrorCode::Forbidden,
                        format!("only root may submit jobs as another user ({name})"),
                    ))
                }
            }
            // Jobs run with the caller's effective group, as SO_PEERCRED reports it.
            None => Ok(Credentials::of_ids(caller.uid, caller.gid)),
        }
    }

    /// The user limits (issues 14 and 15), refused whole before anything is journaled: the
    /// caller's priority cap (root may submit as a user at any priority), dependencies that
    /// can be met, and the queue caps counting every array task.
    fn check_limits(
        &self,
        caller: &Caller,
        uid: u32,
        specs: &[JobSpec],
        acc: &Accepted,
    ) -> Result<(), ProtocolError> {
        let tasks: usize = specs
            .iter()
            .map(|s| s.array.as_ref().map_or(1, |a| a.indices().len()))
            .sum();
        let limits = self.shared.limits();
        for spec in specs {
            super::queuecap::check_priority(&limits, caller.uid, spec.priority)?;
        }
        {
            let table = self.shared.table();
            for spec in specs {
                check_dependencies(&table, spec)?;
            }
            let (mine, all) = acc.staged.counts(uid);
            let earlier = super::queuecap::Earlier { mine, all };
            super::queuecap::check(&limits, &table, uid, tasks, earlier)?;
        }
        Ok(())
    }

    /// Checks and journals `specs` (not yet durable); all or nothing.
    fn accept(
        &self,
        caller: &Caller,
        specs: Vec<JobSpec>,
        user: Option<&str>,
        acc: &mut Accepted,
    ) -> Result<Vec<JobId>, ProtocolError> {
        // One user lookup (passwd and group files through NSS) per batch and user, not per job.
        let creds = match acc.users.iter().find(|(u, _)| u.as_deref() == user) {
            Some((_, c)) => c.clone(),
            None => {
                let c = self.credentials(caller, user)?;
                acc.users.push((user.map(str::to_string), c.clone()));
                c
            }
        };
        let claim = self.shared.service_claim;
        for (i, spec) in specs.iter().enumerate() {
            let which = if specs.len() > 1 {
                format!("job {i} ({}): ", spec.name)
            } else {
                String::new()
            };
            spec.validate()
                .map_err(|e| err(ErrorCode::Invalid, format!("{which}{e}")))?;
            if spec.task.is_some() {
                return Err(err(
                    ErrorCode::Invalid,
                    format!("{which}task is set by the daemon; submit an array with `array`"),
                ));
            }
            fit::check(spec, &self.shared.node, claim)
                .map_err(|e| err(ErrorCode::Invalid, format!("{which}{e}")))?;
        }
        self.check_limits(caller, creds.uid, &specs, acc)?;
        let owner = Owner {
            uid: creds.uid,
            gid: creds.gid,
            user: creds.name.clone(),
        };
        let at = now();
        let mut ids = Vec::with_capacity(specs.len());
        for mut spec in specs {
            let array = spec.array.take();
            let mut stage = |id: JobId, spec: JobSpec| -> Result<(), ProtocolError> {
                let rec = JobRecord::new(id, spec, owner.clone(), at);
                self.shared
                    .jobs
                    .stage(&mut acc.staged, rec, creds.clone())
                    .map_err(|e| err(ErrorCode::Internal, e.to_string()))
            };
            // An array: one task per index, known by its first task's id.
            let first = self.shared.allocate_id();
            let Some(array) = array else {
                stage(first, spec)?;
                ids.push(first);
                continue;
            };
            for (i, &index) in array.indices().iter().enumerate() {
                let id = if i == 0 {
                    first
                } else {
                    self.shared.allocate_id()
                };
                let mut task = spec.clone();
                task.task = Some(ArrayTask {
                    array: first,
                    index,
                    limit: array.limit,
                });
                task.env.insert(ENV_ARRAY_JOB_ID.into(), first.to_string());
                task.env.insert(ENV_ARRAY_TASK_ID.into(), index.to_string());
                stage(id, task)?;
            }
            ids.push(first);
        }
        Ok(ids)
    }

    /// Makes accepted jobs durable, then visible (table, queue), and wakes the control loop.
    fn commit(&self, acc: &mut Accepted) -> Result<(), ProtocolError> {
        if acc.staged.is_empty() {
            return Ok(());
        }
        let policy = self.shared.policy();
        self.shared
            .jobs
            .accept(&mut acc.staged, |rec| policy.rank(&rec.view()))
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
        self.shared.wake();
        Ok(())
    }

    fn status(&self, caller: &Caller, id: Option<JobId>) -> Result<Reply, ProtocolError> {
        let table = self.shared.table();
        match id {
            Some(id) => table
                .get(id)
                .map(|r| Reply::Job {
                    job: table.shown(r, caller.uid),
                })
                .ok_or_else(|| err(ErrorCode::NotFound, format!("no job {id}"))),
            None => Ok(Reply::Jobs {
                jobs: table.iter().map(|r| table.shown(r, caller.uid)).collect(),
            }),
        }
    }

    fn wait(&self, caller: &Caller, w: &Wait) -> Result<Reply, ProtocolError> {
        let stopping = || {
            self.shared
                .stopping
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let timeout = Duration::from_millis(w.timeout_ms.min(MAX_POLL_MS));
        let (done, job) = self
            .shared
            .jobs
            .wait(w.id, timeout, stopping, |r| r.status(caller.uid))
            .map_err(|_| err(ErrorCode::NotFound, format!("no job {}", w.id)))?;
        Ok(Reply::Waited { done, job })
    }

    fn op(
        &self,
        make: impl FnOnce(
            crossbeam_channel::Sender<Result<crate::api::protocol::JobStatus, ProtocolError>>,
        ) -> Op,
    ) -> Result<Reply, ProtocolError> {
        let (tx, rx) = bounded(1);
        self.shared
            .ops
            .send(make(tx))
            .map_err(|_| err(ErrorCode::Internal, "the daemon is shutting down"))?;
        match rx.recv_timeout(OP_TIMEOUT) {
            Ok(Ok(job)) => Ok(Reply::Job { job }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(err(
                ErrorCode::Internal,
                "the control loop did not answer in time",
            )),
        }
    }

    fn stats(&self, s: &Stats) -> Result<Reply, ProtocolError> {
        let probe = self.shared.probe().ok_or_else(|| {
            err(
                ErrorCode::NotFound,
                "no protected service is being monitored (none configured or found)",
            )
        })?;
        let mut report = probe.report();
        if !s.histograms {
            report.cumulative_hist = None;
            for w in &mut report.windows {
                w.hist = None;
            }
            report.current.hist = None;
        }
        serde_json::to_value(&report)
            .map(|stats| Reply::Stats { stats })
            .map_err(|e| err(ErrorCode::Internal, format!("cannot encode stats: {e}")))
    }

    fn one(&self, caller: &Caller, req: Request) -> Result<Reply, ProtocolError> {
        let caller = *caller;
        match req {
            // Submits are handled in `handle_batch`.
            Request::Submit(_) | Request::SubmitMany(_) => {
                Err(err(ErrorCode::Internal, "submit reached the wrong path"))
            }
            Request::Status(s) => self.status(&caller, s.id),
            Request::Wait(w) => self.wait(&caller, &w),
            Request::Cancel(t) => self.op(|reply| Op::Cancel {
                id: t.id,
                caller,
                reply,
            }),
            Request::Pause(t) => self.op(|reply| Op::Pause {
                id: t.id,
                caller,
                reply,
            }),
            Request::Resume(t) => self.op(|reply| Op::Resume {
                id: t.id,
                caller,
                reply,
            }),
            Request::Stats(s) => self.stats(&s),
            Request::Metrics(_) => Ok(Reply::Metrics {
                metrics: self.shared.metrics.render(),
            }),
            Request::Events(e) => {
                let limit = e.limit.unwrap_or(10_000).clamp(1, 100_000);
                let timeout = Duration::from_millis(e.timeout_ms.min(MAX_POLL_MS));
                let (events, last) = self.shared.jobs.events().since(e.after, limit, timeout);
                Ok(Reply::Events { events, last })
            }
        }
    }
}

impl Handler for RequestHandler {
    /// Submits in a batch share one journal fsync; any other request first makes the submits
    /// before it durable and visible, so a `status` after a `submit` on one connection sees it.
    fn handle_batch(
        &self,
        caller: &Caller,
        reqs: Vec<Result<Request, ProtocolError>>,
    ) -> Vec<Response> {
        let mut out: Vec<Option<Response>> = vec![None; reqs.len()];
        let mut acc = Accepted::default();
        let flush = |acc: &mut Accepted, out: &mut Vec<Option<Response>>| {
            let result = self.commit(acc);
            for (i, ids, many) in std::mem::take(&mut acc.slots) {
                out[i] = Some(match &result {
                    Ok(()) if many => Response::ok(Reply::SubmittedMany { ids }),
                    Ok(()) => Response::ok(Reply::Submitted { id: ids[0] }),
                    Err(e) => Response::err(e.clone()),
                });
            }
        };
        for (i, req) in reqs.into_iter().enumerate() {
            let submitted = match req {
                Err(e) => {
                    out[i] = Some(Response::err(e));
                    continue;
                }
                Ok(Request::Submit(s)) => self
                    .accept(caller, vec![s.job], s.user.as_deref(), &mut acc)
                    .map(|ids| (ids, false)),
                Ok(Request::SubmitMany(s)) => self
                    .accept(caller, s.jobs, s.user.as_deref(), &mut acc)
                    .map(|ids| (ids, true)),
                Ok(other) => {
                    flush(&mut acc, &mut out);
                    out[i] = Some(match self.one(caller, other) {
                        Ok(reply) => Response::ok(reply),
                        Err(e) => Response::err(e),
                    });
                    continue;
                }
            };
            match submitted {
                Ok((ids, many)) => acc.slots.push((i, ids, many)),
                Err(e) => out[i] = Some(Response::err(e)),
            }
        }
        flush(&mut acc, &mut out);
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Response::err(err(ErrorCode::Internal, "no answer"))))
            .collect()
    }
}
