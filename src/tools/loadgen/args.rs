//! `lowsched loadgen`'s command line and its output (table, `--json`, `--hlog`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use argh::{ArgsInfo, FromArgs};

use super::{LoadgenConfig, LoadgenError, Schedule, render_table, run_loadgen, write_hlog};

#[derive(FromArgs, ArgsInfo, Debug, Clone, PartialEq)]
#[argh(subcommand, name = "loadgen", help_triggers("-h", "--help"))]
/// Open-loop memcached load generator: sends gets (and sets) on a schedule whatever the answers
/// do, and times each from its intended send time. For benchmarks pin it and give it real-time
/// priority (--cpu N --realtime), or run it under `taskset -c N chrt -f 50`.
pub struct LoadgenArgs {
    /// memcached address (default 127.0.0.1:11211)
    #[argh(option, default = "String::from(\"127.0.0.1:11211\")")]
    pub server: String,
    /// seconds to run (default 10)
    #[argh(option, default = "10.0")]
    pub duration: f64,
    /// fixed target rate in requests per second (default 10000 unless a schedule is given)
    #[argh(option)]
    pub qps: Option<f64>,
    /// random-walk schedule: lowest rate
    #[argh(option)]
    pub qps_min: Option<f64>,
    /// random-walk schedule: highest rate
    #[argh(option)]
    pub qps_max: Option<f64>,
    /// random-walk schedule: seconds between rate changes (default 1)
    #[argh(option, default = "1.0")]
    pub qps_interval: f64,
    /// seed of the random walk, key choice and get/set mix (default 1)
    #[argh(option, default = "1")]
    pub seed: u64,
    /// schedule from a file of `seconds qps` lines
    #[argh(option)]
    pub trace: Option<PathBuf>,
    /// connections to open (default 2)
    #[argh(option, default = "2")]
    pub connections: usize,
    /// number of distinct keys (default 10000)
    #[argh(option, default = "10000")]
    pub keys: u64,
    /// key length in bytes (default 16)
    #[argh(option, default = "16")]
    pub key_size: usize,
    /// value length in bytes for sets (default 64)
    #[argh(option, default = "64")]
    pub value_size: usize,
    /// fraction of requests that are sets (default 0)
    #[argh(option, default = "0.0")]
    pub set_ratio: f64,
    /// set every key once before the run
    #[argh(switch)]
    pub preload: bool,
    /// report interval in seconds (default 1)
    #[argh(option, default = "1.0")]
    pub interval: f64,
    /// shortest time between send wake-ups in microseconds; what is due is batched (default 50)
    #[argh(option, default = "50")]
    pub tick_us: u64,
    /// pin the load generator to this CPU
    #[argh(option)]
    pub cpu: Option<usize>,
    /// run at real-time priority (SCHED_FIFO 50; needs root)
    #[argh(switch)]
    pub realtime: bool,
    /// print the report as JSON
    #[argh(switch)]
    pub json: bool,
    /// write the intervals as an HdrHistogram interval log (V2 compressed) to FILE
    #[argh(option)]
    pub hlog: Option<PathBuf>,
}

fn secs(v: f64, what: &str) -> Result<Duration, LoadgenError> {
    if v.is_finite() && v > 0.0 && v < 1e7 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(LoadgenError::Config(format!(
            "{what} {v} must be a positive number of seconds"
        )))
    }
}

impl LoadgenArgs {
    /// The run these arguments describe.
    pub fn to_config(&self) -> Result<LoadgenConfig, LoadgenError> {
        let duration = secs(self.duration, "--duration")?;
        let walk = self.qps_min.is_some() || self.qps_max.is_some();
        let given =
            usize::from(self.qps.is_some()) + usize::from(walk) + usize::from(self.trace.is_some());
        if given > 1 {
            return Err(LoadgenError::Config(
                "give one of --qps, --qps-min/--qps-max, --trace".into(),
            ));
        }
        let schedule = if let Some(path) = &self.trace {
            let text = std::fs::read_to_string(path).map_err(|source| LoadgenError::Read {
                path: path.clone(),
                source,
            })?;
            Schedule::parse_trace(&text, &path.display().to_string())?
        } else if walk {
            let (Some(min), Some(max)) = (self.qps_min, self.qps_max) else {
                return Err(LoadgenError::Config(
                    "--qps-min and --qps-max go together".into(),
                ));
            };
            Schedule::random_walk(min, max, self.qps_interval, self.seed, self.duration)?
        } else {
            Schedule::fixed(self.qps.unwrap_or(10_000.0))?
        };
        Ok(LoadgenConfig {
            server: self.server.clone(),
            duration,
            schedule,
            connections: self.connections,
            keys: self.keys,
            key_size: self.key_size,
            value_size: self.value_size,
            set_ratio: self.set_ratio,
            preload: self.preload,
            interval: secs(self.interval, "--interval")?,
            tick: Duration::from_micros(self.tick_us),
            seed: self.seed,
            cpu: self.cpu,
            realtime: self.realtime.then_some(50),
            drain: Duration::from_secs(1),
        })
    }
}

/// `lowsched loadgen`: runs the load and prints the report to stdout.
pub fn run(args: LoadgenArgs) -> Result<(), LoadgenError> {
    let cfg = args.to_config()?;
    let report = run_loadgen(&cfg, None)?;
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&report)?;
        s.push('\n');
        s
    } else {
        render_table(&report)
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|source| LoadgenError::Write {
            what: "the report".into(),
            source,
        })?;
    if let Some(path) = &args.hlog {
        let mut f = std::fs::File::create(path).map_err(|source| LoadgenError::Write {
            what: path.display().to_string(),
            source,
        })?;
        write_hlog(&report, &mut f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<LoadgenArgs, argh::EarlyExit> {
        LoadgenArgs::from_args(&["loadgen"], args)
    }

    #[test]
    fn defaults_and_schedules() {
        let a = parse(&[]).unwrap();
        let c = a.to_config().unwrap();
        assert_eq!(c.server, "127.0.0.1:11211");
        assert_eq!(c.schedule.rate_at(3.0), 10_000.0);
        assert_eq!(c.connections, 2);
        let a = parse(&[
            "--qps-min",
            "100",
            "--qps-max",
            "200",
            "--seed",
            "9",
            "--duration",
            "5",
        ])
        .unwrap();
        let c = a.to_config().unwrap();
        assert!((100.0..=200.0).contains(&c.schedule.rate_at(2.0)));
        let a = parse(&["--qps", "5", "--qps-min", "1", "--qps-max", "2"]).unwrap();
        assert!(a.to_config().unwrap_err().to_string().contains("one of"));
        let a = parse(&["--qps-min", "1"]).unwrap();
        assert!(a.to_config().is_err());
        let a = parse(&["--trace", "/nonexistent/trace.txt"]).unwrap();
        assert!(
            a.to_config()
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/trace.txt")
        );
        let a = parse(&["--duration", "-1"]).unwrap();
        assert!(
            a.to_config()
                .unwrap_err()
                .to_string()
                .contains("--duration")
        );
        assert!(parse(&["--qps", "abc"]).is_err());
        let a = parse(&[
            "--cpu",
            "1",
            "--realtime",
            "--json",
            "--hlog",
            "x.hlog",
            "--tick-us",
            "20",
        ])
        .unwrap();
        let c = a.to_config().unwrap();
        assert_eq!(
            (c.cpu, c.realtime, c.tick),
            (Some(1), Some(50), Duration::from_micros(20))
        );
    }

    #[test]
    fn a_trace_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.txt");
        std::fs::write(&p, "0 100\n1 300\n").unwrap();
        let a = parse(&["--trace", p.to_str().unwrap()]).unwrap();
        assert_eq!(a.to_config().unwrap().schedule.rate_at(1.5), 300.0);
    }
}
