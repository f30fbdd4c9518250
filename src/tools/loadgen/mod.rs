//! `lowsched loadgen`: an open-loop memcached load generator in the spirit of mcperf. Requests go
//! out on a schedule (fixed rate, seeded random walk, or trace) whatever the answers do, and each
//! is timed from its *intended* send time into HDR histograms, so a slow server cannot hide its
//! slowness by slowing the client (no coordinated omission).
//!
//! One thread does everything with blocking epoll: it sleeps until the next send is due or an
//! answer arrives, and sends everything due at a wake-up in one write per connection, waking for
//! sends at most once per `tick`.

mod args;
mod engine;
mod report;
pub mod schedule;
mod setup;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

pub use args::{LoadgenArgs, run};
pub use report::{IntervalReport, LoadgenReport, render_table, write_hlog};
pub use schedule::Schedule;

/// Why a load run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("bad loadgen setting: {0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot resolve {server}: {why}")]
    Resolve { server: String, why: String },
    #[error("cannot connect to memcached at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("preloading keys failed: {0}")]
    Preload(String),
    #[error("epoll failed: {0}")]
    Epoll(std::io::Error),
    #[error("cannot {what}: {source}")]
    Sched {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot write {what}: {source}")]
    Write {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Histogram(#[from] crate::sense::latency::LatencyError),
    #[error(transparent)]
    Hlog(#[from] crate::sense::latency::hlog::HlogError),
    #[error("cannot encode the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the load generator thread panicked")]
    Panicked,
}

/// A load run's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadgenConfig {
    /// memcached's `HOST:PORT`.
    pub server: String,
    pub duration: Duration,
    pub schedule: Schedule,
    pub connections: usize,
    /// Key space: keys are drawn uniformly from this many.
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
    /// Fraction of requests that are `set`s (the rest are `get`s).
    pub set_ratio: f64,
    /// Set every key once before the timed run.
    pub preload: bool,
    /// Report interval.
    pub interval: Duration,
    /// Shortest time between two send wake-ups: at high rates, what is due is batched.
    pub tick: Duration,
    /// Seed of key choice and get/set mix.
    pub seed: u64,
    /// Pin the generating thread to this CPU.
    pub cpu: Option<usize>,
    /// Run the generating thread `SCHED_FIFO` at this priority.
    pub realtime: Option<i32>,
    /// After the last send, how long to wait for outstanding answers.
    pub drain: Duration,
}

impl Default for LoadgenConfig {
    fn default() -> Self {
        Self {
            server: "127.0.0.1:11211".into(),
            duration: Duration::from_secs(10),
            schedule: Schedule::fixed(10_000.0).expect("constant rate is valid"),
            connections: 2,
            keys: 10_000,
            key_size: 16,
            value_size: 64,
            set_ratio: 0.0,
            preload: false,
            interval: Duration::from_secs(1),
            tick: DEFAULT_TICK,
            seed: 1,
            cpu: None,
            realtime: None,
            drain: Duration::from_secs(1),
        }
    }
}

/// Default send tick (see README "Sensing" for the measurement behind it).
pub const DEFAULT_TICK: Duration = Duration::from_micros(50);

/// Runs a load in the calling thread (pinning and priority apply to it) until the duration
/// ends or `stop` is set.
pub fn run_loadgen(
    cfg: &LoadgenConfig,
    stop: Option<&AtomicBool>,
) -> Result<LoadgenReport, LoadgenError> {
    engine::run(cfg, stop)
}

/// Runs a load on a new thread, for tests and the daemon's demo. Set `stop` to end it early.
pub fn spawn_loadgen(
    cfg: LoadgenConfig,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<LoadgenReport, LoadgenError>> {
    std::thread::spawn(move || engine::run(&cfg, Some(&stop)))
}

/// Waits for a spawned load and returns its report.
pub fn join_loadgen(
    h: JoinHandle<Result<LoadgenReport, LoadgenError>>,
) -> Result<LoadgenReport, LoadgenError> {
    h.join().map_err(|_| LoadgenError::Panicked)?
}
