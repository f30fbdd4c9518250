//! The `lowsched daemon`: wires samplers → state → policy → commands → actuator into one process,
//! and serves the socket.
//!
//! Threads: the control loop (owns the actuator and the SLO controller), the socket acceptor
//! and one thread per connection, one sampler per core, the latency probe, the exit watcher,
//! and a signal thread that turns SIGTERM/SIGINT into an orderly stop and SIGHUP into a reload
//! (module `reload`). On stop the daemon stops
//! accepting, logs `end scheduler`, compacts the journal and exits 0; jobs keep running and the
//! next daemon adopts them.

mod commands;
pub mod config;
pub mod control;
pub mod handler;
pub mod jobs;
pub mod metrics;
pub mod observe;
pub mod queuecap;
pub mod recovery;
pub mod relax;
pub mod reload;
mod requests;
pub mod sdnotify;
pub mod server;
pub mod shared;
pub mod slo;
pub mod slurm;
mod startup;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use crate::daemon::sdnotify::{Notifier, watchdog_interval};
use crate::node::cgroup::Layout;

use config::{Config, Overrides};
use control::{Control, ControlSetup};
use server::{Limits, Server};
use shared::Shared;
use slurm::SlurmSlot;

/// Why the daemon could not start (or stop cleanly).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("lowsched daemon must run as root: it creates cgroups and runs jobs as their users")]
    NotRoot,
    #[error("cannot create state dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] crate::store::journal::JournalError),
    #[error(transparent)]
    EventLog(#[from] crate::store::eventlog::EventLogError),
    #[error("cannot read the node's inventory: {0}")]
    Inventory(String),
    #[error("bad policy: {0}")]
    Policy(String),
    #[error(transparent)]
    Actuation(#[from] crate::node::actuator::ActuationError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("cannot start the samplers: {0}")]
    Sampler(String),
    #[error("protected service: {0}")]
    Service(String),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot start the metrics endpoint ([metrics] listen) or the observer: {0}")]
    Observe(std::io::Error),
    #[error("cannot block termination signals: {0}")]
    Signals(nix::errno::Errno),
}

/// The signals the signal thread takes: SIGTERM and SIGINT stop the daemon, SIGHUP reloads.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Starts the thread that turns SIGTERM/SIGINT into a stop and SIGHUP into a reload. The signals must already be
/// blocked in every thread ([`run`] blocks them before starting any), so only `sigwait` here
/// receives them.
fn signal_thread(
    shared: Arc<Shared>,
    stop_server: Arc<AtomicBool>,
    socket: PathBuf,
    mut reloader: reload::Reloader,
) -> Result<(), DaemonError> {
    let set = stop_signals();
    std::thread::Builder::new()
        .name("lowsched-signals".into())
        .spawn(move || {
            loop {
                match set.wait() {
                    Ok(Signal::SIGHUP) => reloader.hangup(&shared),
                    Ok(sig) => {
                        crate::log::notice(&format!("{sig}: stopping (jobs keep running)"));
                        shared.stopping.store(true, Ordering::Relaxed);
                        stop_server.store(true, Ordering::Relaxed);
                        // Wakes the accept thread out of its poll to see the flag.
                        let _ = std::os::unix::net::UnixStream::connect(&socket);
                        shared.wake();
                        shared.jobs.wake_waiters();
                        return;
                    }
                    Err(_) => continue,
                }
            }
        })
        .map(|_| ())
        .map_err(DaemonError::Thread)
}

/// Runs the daemon until SIGTERM or SIGINT.
/// Validates the configuration `o` names as `run` would read it (file, overrides, policy
/// settings), without starting anything; returns which file was read.
pub fn check_config(o: &Overrides) -> Result<Option<PathBuf>, DaemonError> {
    let (cfg, used) = Config::load(o)?;
    startup::policy(&cfg)?;
    Ok(used)
}

/// The start-up line saying what the daemon runs on.
fn log_node(
    actuator: &crate::node::actuator::Actuator,
    node: &crate::model::inventory::Inventory,
    policy: &str,
) {
    crate::log::info(&format!(
        "cgroup root {} ({}), cores [{}], {} memory, {} GPUs, policy {policy}",
        actuator.tree().root().display(),
        actuator.tree().mode(),
        node.cores,
        node.memory,
        node.gpus.len(),
    ));
}

pub fn run(o: &Overrides) -> Result<(), DaemonError> {
    let (cfg, used) = Config::load(o)?;
    let notifier = prepare_process(&cfg, used.as_deref())?;
    // Journal replay and adopting running jobs can outlast systemd's start timeout.
    let starting = notifier.keep_starting(
        sdnotify::EXTEND_EVERY,
        sdnotify::EXTEND_BY,
        sdnotify::EXTEND_AT_MOST,
    );
    let (jobs, replay) = startup::open_store(&cfg)?;
    let node = startup::inventory(&cfg)?;
    let policy = startup::policy(&cfg)?;
    let (mut actuator, exits) = startup::actuator(&cfg, &node)?;
    log_node(&actuator, &node, policy.name());
    let recovered = startup::recover(&replay, &mut actuator, &jobs, policy.as_ref(), &node)?;
    let (ops_tx, ops_rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        jobs,
        policy: std::sync::RwLock::new(Arc::from(policy)),
        node: node.clone(),
        service_claim: startup::service_claim(&cfg),
        limits: std::sync::RwLock::new(cfg.submit_limits()),
        next_id: AtomicU64::new(replay.next_id.max(1)),
        ops: ops_tx,
        probe: Arc::new(Mutex::new(None)),
        stopping: AtomicBool::new(false),
        metrics: Arc::new(metrics::MetricsBoard::new(
            Path::new("/proc/self"),
            crate::sys::clock::unix_time_s(),
        )),
        history_generation: AtomicU64::new(0),
    });
    let _ = shared.jobs.events().set_tap(shared.metrics.clone());
    let server = Server::bind(&cfg.socket, Limits::from(&cfg))?;
    let reloader = reload::Reloader::new(o.clone(), cfg.clone());
    signal_thread(
        shared.clone(),
        server.stop_flag(),
        cfg.socket.clone(),
        reloader,
    )?;
    // Before any job is touched: a metrics address in use stops the start-up here.
    let observers =
        observe::Observers::start(&cfg, shared.clone()).map_err(DaemonError::Observe)?;
    let sensors = startup::sense(&cfg, &node, &actuator, &shared)?;
    let serve = serve(server, shared.clone())?;
    let slurm = SlurmSlot::start(
        &cfg.slurm,
        Layout::detect(Path::new("/proc")).ok(),
        &shared,
        &recovered.foreign,
        Path::new("/proc"),
    );

    let mut control = Control::new(ControlSetup {
        shared: shared.clone(),
        actuator,
        exits,
        ops: ops_rx,
        bell: sensors.bell,
        slo: sensors.slo,
        managed: node.cores,
        policy_tick: Duration::from_millis(cfg.policy.tick_ms),
        notifier,
        watchdog: watchdog_interval(),
        journal: cfg.journal.clone(),
        slurm,
        fair_share_half_life: cfg
            .policy
            .fair_share_half_life()
            .map_err(DaemonError::Policy)?,
    });
    starting.done();
    control.start(recovered.ended_while_down, &cfg.socket);
    control.run();
    observers.stop();
    shutdown(&shared, serve, sensors.sampler, &cfg);
    Ok(())
}

/// After the control loop: the socket closed, samplers stopped, logs closed, journal compacted.
/// Jobs keep running for the next daemon to adopt.
fn shutdown(
    shared: &Shared,
    serve: std::thread::JoinHandle<()>,
    sampler: crate::sense::sampler::SamplerSet,
    cfg: &Config,
) {
    let _ = Notifier::from_env().stopping();
    let _ = serve.join();
    sampler.stop();
    shared.jobs.events().close();
    if let Err(e) = shared.jobs.journal().compact(cfg.journal.keep_finished) {
        crate::log::error(&format!("journal compaction at exit failed: {e}"));
    }
    crate::log::notice("stopped");
}

/// Log level, root, signal mask and state dir: what must hold before any thread starts.
fn prepare_process(cfg: &Config, used: Option<&Path>) -> Result<Notifier, DaemonError> {
    crate::log::set_level(
        crate::log::parse_level(&cfg.log_level).unwrap_or(crate::log::Level::Info),
    );
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    // Before any thread starts, so every thread inherits the mask and only the signal
    // thread's sigwait sees SIGTERM/SIGINT.
    stop_signals()
        .thread_block()
        .map_err(DaemonError::Signals)?;
    let notifier = Notifier::from_env();
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| DaemonError::StateDir {
        path: cfg.state_dir.clone(),
        source,
    })?;
    match used {
        Some(p) => crate::log::info(&format!("config {}", p.display())),
        None => crate::log::info("no config file: built-in defaults"),
    }
    Ok(notifier)
}

/// Serves the socket on its own thread.
fn serve(server: Server, shared: Arc<Shared>) -> Result<std::thread::JoinHandle<()>, DaemonError> {
    let handler = Arc::new(handler::RequestHandler::new(shared));
    let server = Arc::new(server);
    std::thread::Builder::new()
        .name("lowsched-accept".into())
        .spawn(move || server.serve(handler))
        .map_err(DaemonError::Thread)
}
