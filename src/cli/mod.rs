//! The `lowsched` command line: argument definitions (argh) and the client subcommands.

mod args;
pub mod completions;
mod format;
pub mod man;
pub mod report;
pub mod simulate;
pub mod stats;
pub mod status;
mod submit;
pub mod timespec;
mod units;
mod verbs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use argh::{ArgsInfo, FromArgs};

use crate::api::client::{Client, ClientError, socket_path};
use crate::api::protocol::{self, Reply, Request};
use crate::model::array::JobRef;
use crate::model::job::JobId;
use crate::model::jobstate::JobState;
use crate::sense::probe::report::StatsReport;

pub use status::{Filter, StatusArgs};
pub use submit::SubmitArgs;

/// Exit codes of `lowsched wait` beyond the job's own (0–255, or 128+N when killed by signal N).
pub mod exit {
    /// The client could not talk to the daemon, or the daemon refused the request.
    pub const ERROR: u8 = 1;
    /// The job was killed at its run-time limit (`submit --time`).
    pub const TIMEOUT: u8 = 123;
    /// The job became unschedulable: its scheduling timeout passed before it could start.
    pub const UNSCHEDULABLE: u8 = 124;
    /// The job was cancelled.
    pub const CANCELLED: u8 = 125;
    /// The job failed without an exit status (it could not be launched, or its end was lost).
    pub const NO_STATUS: u8 = 126;
}

/// lowsched: keeps a latency-critical service inside its SLO while batch jobs use the spare cores.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(help_triggers("-h", "--help", "help"))]
pub struct Cli {
    /// the daemon's socket (default: $LOWSCHED_SOCKET, else /run/lowsched/lowsched.sock)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    #[argh(subcommand)]
    pub cmd: Cmd,
}

#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand)]
#[allow(clippy::large_enum_variant)] // built once per process; boxing would only add noise
pub enum Cmd {
    Daemon(DaemonArgs),
    Submit(SubmitArgs),
    Status(StatusArgs),
    History(status::HistoryArgs),
    Cancel(CancelArgs),
    Pause(PauseArgs),
    Resume(ResumeArgs),
    Wait(WaitArgs),
    Stats(StatsArgs),
    Events(EventsArgs),
    Metrics(MetricsArgs),
    Report(report::ReportArgs),
    Loadgen(crate::tools::loadgen::LoadgenArgs),
    Simulate(simulate::SimulateArgs),
}

/// Run the scheduler daemon (as root).
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "daemon", help_triggers("-h", "--help"))]
pub struct DaemonArgs {
    /// TOML config file (default: /etc/lowsched/lowsched.toml if it exists)
    #[argh(option)]
    pub config: Option<PathBuf>,
    /// socket to listen on (overrides the config)
    #[argh(option)]
    pub socket: Option<PathBuf>,
    /// state directory for the journal, event log and job output (overrides the config)
    #[argh(option)]
    pub state_dir: Option<PathBuf>,
    /// cgroup root name or path (overrides the config)
    #[argh(option)]
    pub cgroup_root: Option<String>,
    /// do not run: relax this systemd unit's delegated cgroup subtree so the unit can start
    /// again while jobs run (for ExecStopPost= on systemd before 254; see cgroups/README.md)
    #[argh(switch)]
    pub relax: bool,
    /// do not run: check the config (FILE, else --config, else the default) and exit 0 if it
    /// is valid, 1 with the reason if not
    #[argh(switch)]
    pub check_config: bool,
    /// with --check-config: the config file to check
    #[argh(positional)]
    pub file: Option<PathBuf>,
}

/// Cancel jobs (kills those that run): by id, or every job the filters select.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "cancel", help_triggers("-h", "--help"))]
pub struct CancelArgs {
    /// only jobs in these states, comma-separated (see status --help)
    #[argh(option, from_str_fn(status::states))]
    pub state: Option<Vec<JobState>>,
    /// only this user's jobs
    #[argh(option)]
    pub user: Option<String>,
    /// only jobs with this name
    #[argh(option)]
    pub name: Option<String>,
    /// the jobs to cancel: ids, an array's id (all its tasks) or ARRAY_INDEX (one task);
    /// with filters, only those of them the filters select
    #[argh(positional)]
    pub ids: Vec<JobRef>,
}

impl CancelArgs {
    fn filter(&self) -> Filter {
        Filter::of(&self.ids, &self.state, &self.user, &self.name)
    }
}

/// Pause (freeze) jobs until they are resumed: by id, or every job the filters select.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "pause", help_triggers("-h", "--help"))]
pub struct PauseArgs {
    /// only jobs in these states, comma-separated (see status --help)
    #[argh(option, from_str_fn(status::states))]
    pub state: Option<Vec<JobState>>,
    /// only this user's jobs
    #[argh(option)]
    pub user: Option<String>,
    /// only jobs with this name
    #[argh(option)]
    pub name: Option<String>,
    /// the jobs to pause: ids, an array's id (all its tasks) or ARRAY_INDEX (one task);
    /// with filters, only those of them the filters select
    #[argh(positional)]
    pub ids: Vec<JobRef>,
}

impl PauseArgs {
    fn filter(&self) -> Filter {
        Filter::of(&self.ids, &self.state, &self.user, &self.name)
    }
}

/// Resume jobs paused with `lowsched pause`: by id, or every job the filters select.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "resume", help_triggers("-h", "--help"))]
pub struct ResumeArgs {
    /// only jobs in these states, comma-separated (see status --help)
    #[argh(option, from_str_fn(status::states))]
    pub state: Option<Vec<JobState>>,
    /// only this user's jobs
    #[argh(option)]
    pub user: Option<String>,
    /// only jobs with this name
    #[argh(option)]
    pub name: Option<String>,
    /// the jobs to resume: ids, an array's id (all its tasks) or ARRAY_INDEX (one task);
    /// with filters, only those of them the filters select
    #[argh(positional)]
    pub ids: Vec<JobRef>,
}

impl ResumeArgs {
    fn filter(&self) -> Filter {
        Filter::of(&self.ids, &self.state, &self.user, &self.name)
    }
}

/// Wait for a job to end; exit with its exit code (128+N if killed by signal N, 123 if killed at
/// its time limit, 124 if it became unschedulable, 125 if cancelled, 126 if it failed without an
/// exit status, 1 on errors).
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "wait", help_triggers("-h", "--help"))]
pub struct WaitArgs {
    /// the job to wait for
    #[argh(positional)]
    pub id: JobId,
}

/// Show the protected service's latency statistics.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "stats", help_triggers("-h", "--help"))]
pub struct StatsArgs {
    /// print JSON
    #[argh(switch)]
    pub json: bool,
    /// also write latency windows as an HdrHistogram interval log (values in ns) to FILE: the
    /// daemon's recent windows, or with --since/--until/--state-dir a span of the history
    #[argh(option)]
    pub hlog: Option<PathBuf>,
    /// with --hlog: start of the span: 10m (ago), Unix seconds or 2026-12-07T00:40:00Z
    #[argh(option)]
    pub since: Option<String>,
    /// with --hlog: end of the span, same forms
    #[argh(option)]
    pub until: Option<String>,
    /// with --hlog: the daemon's state directory (default: /var/lib/lowsched)
    #[argh(option)]
    pub state_dir: Option<PathBuf>,
}

/// Print the daemon's Prometheus metrics (the text its /metrics endpoint serves).
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "metrics", help_triggers("-h", "--help"))]
pub struct MetricsArgs {}

/// Show the event log; --follow keeps printing new events.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "events", help_triggers("-h", "--help"))]
pub struct EventsArgs {
    /// keep waiting for new events
    #[argh(switch)]
    pub follow: bool,
    /// print JSON lines
    #[argh(switch)]
    pub json: bool,
}

/// Runs the command line of this process: the pre-parse ([`args`]), then argh, then the command.
pub fn main() -> ExitCode {
    let mut raw = std::env::args();
    let program = raw.next().unwrap_or_else(|| "lowsched".into());
    let name = std::path::Path::new(&program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("lowsched")
        .to_string();
    let args = match args::preparse(raw.collect()) {
        args::Preparsed::Version => {
            println!("{}", args::version_line());
            return ExitCode::SUCCESS;
        }
        args::Preparsed::Args(a) => a,
    };
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    match Cli::from_args(&[&name], &strs) {
        Ok(cli) => run(cli),
        Err(early) if early.status.is_ok() => {
            println!("{}", early.output.trim_end());
            ExitCode::SUCCESS
        }
        Err(early) => {
            let sub = args::subcommand(&args)
                .map(|s| format!(" {s}"))
                .unwrap_or_default();
            eprintln!("{}", early.output.trim_end());
            eprintln!("Run {name}{sub} --help for more information.");
            ExitCode::from(exit::ERROR)
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let socket = socket_path(cli.socket.as_deref());
    let result = match cli.cmd {
        Cmd::Daemon(args) => return run_daemon(cli.socket, args),
        Cmd::Submit(args) => submit::run(&socket, args),
        Cmd::Status(args) => verbs::status(&socket, args),
        Cmd::History(args) => verbs::status(&socket, args.as_status()),
        Cmd::Cancel(a) => verbs::act(&socket, &a.filter(), Request::Cancel, "cancelled"),
        Cmd::Pause(a) => verbs::act(&socket, &a.filter(), Request::Pause, "paused"),
        Cmd::Resume(a) => verbs::act(&socket, &a.filter(), Request::Resume, "resumed"),
        Cmd::Wait(args) => wait(&socket, args.id),
        Cmd::Stats(args) => stats(&socket, args),
        Cmd::Events(args) => events(&socket, args),
        Cmd::Metrics(_) => metrics(&socket),
        Cmd::Report(args) => {
            return match report::run(&args) {
                Ok(w) => {
                    print!("{}", w.summary);
                    println!("report: {} and {}", w.svg.display(), w.png.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("lowsched report: {e}");
                    ExitCode::from(exit::ERROR)
                }
            };
        }
        Cmd::Loadgen(args) => {
            return match crate::tools::loadgen::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lowsched loadgen: {e}");
                    ExitCode::from(exit::ERROR)
                }
            };
        }
        Cmd::Simulate(args) => {
            return simulate::run(args).unwrap_or_else(|e| {
                eprintln!("lowsched simulate: {e}");
                ExitCode::from(exit::ERROR)
            });
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("lowsched: {e}");
        ExitCode::from(exit::ERROR)
    })
}

fn run_daemon(global_socket: Option<PathBuf>, args: DaemonArgs) -> ExitCode {
    if args.relax {
        return match crate::daemon::relax::relax_own_unit() {
            Ok(msg) => {
                eprintln!("lowsched: {msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lowsched: {e}");
                ExitCode::from(exit::ERROR)
            }
        };
    }
    if args.file.is_some() && !args.check_config {
        eprintln!("lowsched daemon: a FILE argument is only for --check-config; use --config FILE");
        return ExitCode::from(exit::ERROR);
    }
    let check = args.check_config;
    let overrides = crate::daemon::config::Overrides {
        config: args.file.or(args.config),
        socket: args.socket.or(global_socket),
        state_dir: args.state_dir,
        cgroup_root: args.cgroup_root,
    };
    if check {
        return match crate::daemon::check_config(&overrides) {
            Ok(Some(path)) => {
                println!("{}: valid", path.display());
                ExitCode::SUCCESS
            }
            Ok(None) => {
                println!("no config file; the built-in defaults are valid");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lowsched daemon: {e}");
                ExitCode::from(exit::ERROR)
            }
        };
    }
    match crate::daemon::run(&overrides) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::log::error(&format!("lowsched daemon: {e}"));
            ExitCode::from(exit::ERROR)
        }
    }
}

pub(super) fn call(socket: &Path, req: &Request) -> Result<Reply, ClientError> {
    crate::api::client::call(socket, req, crate::api::client::BUSY_PATIENCE)
}

pub(super) fn unexpected(reply: Reply) -> ClientError {
    ClientError::Garbled {
        why: "unexpected answer".into(),
        line: serde_json::to_string(&reply).unwrap_or_default(),
    }
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Waits across daemon restarts (see [`crate::api::client::wait_job`]).
fn wait(socket: &Path, id: JobId) -> Result<ExitCode, ClientError> {
    let job = crate::api::client::wait_job(socket, id, crate::api::client::RECONNECT_PATIENCE)?;
    Ok(ExitCode::from(wait_code(&job)))
}

/// The exit code `lowsched wait` reports for a finished job.
pub fn wait_code(job: &protocol::JobStatus) -> u8 {
    match (job.state, job.exit_code, job.signal) {
        (JobState::Cancelled, ..) => exit::CANCELLED,
        (JobState::Unschedulable, ..) => exit::UNSCHEDULABLE,
        (JobState::Timeout, ..) => exit::TIMEOUT,
        (_, _, Some(sig)) => 128u8.saturating_add(u8::try_from(sig).unwrap_or(127)),
        (_, Some(code), None) => u8::try_from(code & 0xff).unwrap_or(exit::NO_STATUS),
        (_, None, None) => exit::NO_STATUS,
    }
}

fn metrics(socket: &Path) -> Result<ExitCode, ClientError> {
    match call(socket, &Request::Metrics(protocol::Metrics {}))? {
        Reply::Metrics { metrics } => print!("{metrics}"),
        other => return Err(unexpected(other)),
    }
    Ok(ExitCode::SUCCESS)
}

fn stats(socket: &Path, args: StatsArgs) -> Result<ExitCode, ClientError> {
    let mut exported = false;
    if let Some(path) = &args.hlog {
        match stats::export_history(&args, path) {
            Ok(Some(n)) => {
                eprintln!(
                    "lowsched: wrote {n} windows of the history to {}",
                    path.display()
                );
                exported = true;
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("lowsched: {e}");
                return Ok(ExitCode::from(exit::ERROR));
            }
        }
    }
    let req = Request::Stats(protocol::Stats {
        histograms: args.hlog.is_some() && !exported,
    });
    let reply = match call(socket, &req) {
        Ok(r) => r,
        // The export needs no daemon; the table does.
        Err(e) if exported => {
            eprintln!("lowsched: no table: {e}");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    let Reply::Stats { stats } = reply else {
        return Err(ClientError::Garbled {
            why: "expected stats".into(),
            line: String::new(),
        });
    };
    let report: StatsReport =
        serde_json::from_value(stats.clone()).map_err(|e| ClientError::Garbled {
            why: format!("not a stats report: {e}"),
            line: stats.to_string(),
        })?;
    if args.json {
        println!("{}", to_json(&stats));
    } else {
        print!("{}", stats::render_table(&report));
    }
    if let Some(path) = args.hlog.filter(|_| !exported) {
        if let Err(e) = stats::write_hlog_file(&report, &path) {
            eprintln!("lowsched: {e}");
            return Ok(ExitCode::from(exit::ERROR));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn events(socket: &Path, args: EventsArgs) -> Result<ExitCode, ClientError> {
    const LIMIT: usize = 10_000;
    let mut client = Client::connect(socket)?;
    let mut after = 0;
    loop {
        // The first call returns the backlog at once; with --follow later calls long-poll.
        let timeout_ms = if args.follow && after > 0 { 30_000 } else { 0 };
        let req = Request::Events(protocol::Events {
            after,
            timeout_ms,
            limit: Some(LIMIT),
        });
        let Reply::Events { events, last } = client.call(&req)? else {
            return Err(ClientError::Garbled {
                why: "expected events".into(),
                line: String::new(),
            });
        };
        for e in &events {
            if args.json {
                println!("{}", serde_json::to_string(e).unwrap_or_default());
            } else {
                println!("{}", format::event_line(e));
            }
        }
        after = last.max(after);
        if !args.follow && events.len() < LIMIT {
            return Ok(ExitCode::SUCCESS);
        }
    }
}
