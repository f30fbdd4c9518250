//! The Slurm worker thread: runs every `scontrol`/`squeue`/`sinfo` call in order, so the
//! control loop only queues requests and picks up answers, and never waits for slurmctld.
//!
//! Besides the queued requests it polls, every `poll` interval, the node's jobs (`squeue`) and
//! the node's state and reason (`sinfo`). A failed call is answered with its error; the worker
//! itself keeps going until its handle is dropped.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::model::cpuset::CpuSet;

use super::scontrol::{
    JobEnd, NodeStatus, QueuedJob, SCONTROL, SINFO, SINFO_FORMAT, SQUEUE, SQUEUE_FORMAT, Tools,
    parse_cpu_ids, parse_job_end, parse_node, parse_squeue,
};

/// What the control loop asks of Slurm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Suspend(u64),
    Resume(u64),
    /// `scontrol update NodeName=<node> State=DRAIN Reason=<reason>`.
    Drain(String),
    /// `State=RESUME`.
    Undrain,
    /// The job's CPU ids on this node (`scontrol show job -d`).
    Allocation(u64),
    /// How the job ended (`scontrol show job -o`).
    End(u64),
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Suspend(id) => write!(f, "suspend job {id}"),
            Request::Resume(id) => write!(f, "resume job {id}"),
            Request::Drain(reason) => {
                write!(f, "drain the node ({})", crate::model::text::quoted(reason))
            }
            Request::Undrain => f.write_str("undrain the node"),
            Request::Allocation(id) => write!(f, "read job {id}'s allocation"),
            Request::End(id) => write!(f, "read how job {id} ended"),
        }
    }
}

/// What comes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A request finished: `Ok` or the error's text.
    Done(Request, Result<(), String>),
    /// The allocation of a job (None: not found on this node).
    Allocation(u64, Result<Option<CpuSet>, String>),
    /// How a job ended (None: Slurm no longer knows it).
    End(u64, Result<Option<JobEnd>, String>),
    /// The jobs `squeue` lists on this node.
    Jobs(Result<Vec<QueuedJob>, String>),
    /// The node's state and reason.
    Node(Result<NodeStatus, String>),
}

/// The handle the control loop holds; dropping it stops the thread.
#[derive(Debug)]
pub struct Worker {
    requests: Option<Sender<Request>>,
    answers: Receiver<Answer>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn start(tools: Tools, node: String, poll: Duration) -> std::io::Result<Self> {
        let (req_tx, req_rx) = crossbeam_channel::unbounded();
        let (ans_tx, ans_rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("lowsched-slurm".into())
            .spawn(move || run(&tools, &node, poll, &req_rx, &ans_tx))?;
        Ok(Self {
            requests: Some(req_tx),
            answers: ans_rx,
            thread: Some(thread),
        })
    }

    /// Queues a request; never blocks.
    pub fn send(&self, request: Request) {
        if let Some(tx) = &self.requests {
            let _ = tx.send(request);
        }
    }

    /// Every answer that has arrived; never blocks.
    pub fn answers(&self) -> Vec<Answer> {
        let mut out = Vec::new();
        loop {
            match self.answers.try_recv() {
                Ok(a) => out.push(a),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(tools: &Tools, node: &str, poll: Duration, rx: &Receiver<Request>, tx: &Sender<Answer>) {
    let mut next_poll = Instant::now();
    loop {
        if Instant::now() >= next_poll {
            let jobs = tools
                .run(SQUEUE, &["-h", "-w", node, "-o", SQUEUE_FORMAT])
                .map(|t| parse_squeue(&t));
            let status = tools
                .run(SINFO, &["-h", "-N", "-n", node, "-o", SINFO_FORMAT])
                .map_err(|e| e.to_string())
                .and_then(|t| parse_node(&t).ok_or_else(|| format!("sinfo: no node {node}")));
            let sent = tx.send(Answer::Jobs(jobs.map_err(|e| e.to_string())));
            if sent.is_err() || tx.send(Answer::Node(status)).is_err() {
                return;
            }
            next_poll = Instant::now() + poll;
        }
        match rx.recv_timeout(next_poll.saturating_duration_since(Instant::now())) {
            Ok(request) => {
                if tx.send(carry_out(tools, node, request)).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn carry_out(tools: &Tools, node: &str, request: Request) -> Answer {
    let result = match &request {
        Request::Suspend(id) => tools.run(SCONTROL, &["suspend", &id.to_string()]),
        Request::Resume(id) => tools.run(SCONTROL, &["resume", &id.to_string()]),
        Request::Drain(reason) => tools.run(
            SCONTROL,
            &[
                "update",
                &format!("NodeName={node}"),
                "State=DRAIN",
                &format!("Reason={reason}"),
            ],
        ),
        Request::Undrain => tools.run(
            SCONTROL,
            &["update", &format!("NodeName={node}"), "State=RESUME"],
        ),
        Request::Allocation(id) => {
            let cpus = tools
                .run(SCONTROL, &["show", "job", "-d", &id.to_string()])
                .map(|t| parse_cpu_ids(&t, node))
                .map_err(|e| e.to_string());
            return Answer::Allocation(*id, cpus);
        }
        Request::End(id) => {
            let end = tools
                .run(SCONTROL, &["show", "job", "-o", &id.to_string()])
                .map(|t| parse_job_end(&t))
                .map_err(|e| e.to_string());
            return Answer::End(*id, end);
        }
    };
    Answer::Done(request, result.map(drop).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_run_in_order_and_polls_report_jobs_and_node() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            let text = format!(
                "#!/bin/sh\necho \"{name} $*\" >>{}\n{body}\n",
                log.display()
            );
            std::fs::write(&p, text).unwrap();
            let mut perm = std::fs::metadata(&p).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
            std::fs::set_permissions(&p, perm).unwrap();
        };
        script(
            SCONTROL,
            "case $1 in show) echo '   Nodes=n1 CPU_IDs=0-1 Mem=0';; resume) echo 'Job is not suspended' >&2; exit 1;; esac",
        );
        script(SQUEUE, "echo '5|0|RUNNING|10'");
        script(SINFO, "echo 'drained|lowsched: x'");
        let tools = Tools {
            bin_dir: Some(dir.path().to_path_buf()),
            timeout: Duration::from_secs(5),
        };
        let w = Worker::start(tools, "n1".into(), Duration::from_secs(3600)).unwrap();
        w.send(Request::Suspend(5));
        w.send(Request::Resume(5));
        w.send(Request::Allocation(5));
        w.send(Request::Drain("lowsched: no core".into()));
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while got.len() < 6 && Instant::now() < deadline {
            got.extend(w.answers());
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(w);
        assert!(got.contains(&Answer::Done(Request::Suspend(5), Ok(()))));
        assert!(got.iter().any(|a| matches!(a,
            Answer::Done(Request::Resume(5), Err(e)) if e.contains("not suspended"))));
        assert!(got.contains(&Answer::Allocation(5, Ok(Some("0-1".parse().unwrap())))));
        assert!(
            got.iter()
                .any(|a| matches!(a, Answer::Jobs(Ok(j)) if j[0].id == 5))
        );
        assert!(
            got.iter()
                .any(|a| matches!(a, Answer::Node(Ok(n)) if n.state == "drained"))
        );
        let calls = std::fs::read_to_string(&log).unwrap();
        let order: Vec<&str> = calls.lines().filter(|l| l.starts_with(SCONTROL)).collect();
        assert_eq!(
            order,
            vec![
                "scontrol suspend 5",
                "scontrol resume 5",
                "scontrol show job -d 5",
                "scontrol update NodeName=n1 State=DRAIN Reason=lowsched: no core"
            ]
        );
    }
}
