//! `lowsched simulate`: runs the simulator (a config file) or replays a recording.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::{ArgsInfo, FromArgs};

use crate::tools::simulate::{self, SimConfig, SimError, replay};

/// Model a node: run a load trace and batch jobs under lowsched and every static partition,
/// or replay the controller turns a daemon recorded (controller.record_turns) with new
/// thresholds.
#[derive(FromArgs, ArgsInfo, Debug)]
#[argh(subcommand, name = "simulate")]
pub struct SimulateArgs {
    /// replay this events.jsonl instead of simulating
    #[argh(option)]
    pub replay: Option<PathBuf>,
    /// with --replay: TOML with controller settings to change (a daemon config's [controller]
    /// table, or its bare keys)
    #[argh(option)]
    pub thresholds: Option<PathBuf>,
    /// with --replay: exit 1 if any turn's answer differs from the recorded one
    #[argh(switch)]
    pub check: bool,
    /// override the config's core count
    #[argh(option)]
    pub cores: Option<usize>,
    /// override the config's seed
    #[argh(option)]
    pub seed: Option<u64>,
    /// simulator config (TOML; see benches/simulate/)
    #[argh(positional)]
    pub config: Option<PathBuf>,
}

pub fn run(args: SimulateArgs) -> Result<ExitCode, SimError> {
    if let Some(path) = &args.replay {
        return replay_file(path, args.thresholds.as_deref(), args.check);
    }
    let path = args
        .config
        .ok_or_else(|| SimError::Config("give a config file, or --replay FILE".into()))?;
    let mut cfg = SimConfig::load(&path)?;
    cfg.cores = args.cores.unwrap_or(cfg.cores);
    cfg.seed = args.seed.unwrap_or(cfg.seed);
    let report = simulate::run(&cfg)?;
    println!(
        "model result: {} cores, seed {}, policy {}, SLO p95 {} us (1 s windows)",
        cfg.cores, cfg.seed, cfg.policy, cfg.slo_p95_us
    );
    print!("{}", report.table());
    Ok(ExitCode::SUCCESS)
}

fn replay_file(
    path: &std::path::Path,
    thresholds: Option<&std::path::Path>,
    check: bool,
) -> Result<ExitCode, SimError> {
    let overrides = match thresholds {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| SimError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            let mut table: toml::Table = toml::from_str(&text).map_err(|e| SimError::Parse {
                path: p.to_path_buf(),
                why: e.to_string(),
            })?;
            if let Some(toml::Value::Table(c)) = table.remove("controller") {
                table = c;
            }
            Some(table)
        }
    };
    let runs = replay::read(path)?;
    if runs.is_empty() {
        return Err(SimError::Recording {
            path: path.to_path_buf(),
            line: 0,
            why: "no controller header: was the daemon run with controller.record_turns = true?"
                .into(),
        });
    }
    let mut differ = 0;
    for (i, rec) in runs.iter().enumerate() {
        let cfg = match &overrides {
            Some(o) => Some(replay::with_overrides(&rec.header.config, o)?),
            None => None,
        };
        let out = replay::replay(rec, cfg.as_ref())?;
        println!(
            "run {}: {} turns on cores [{}], service {}..={} cores",
            i + 1,
            out.turns,
            rec.header.cores,
            rec.header.min,
            rec.header.max
        );
        for (at, what) in &out.decisions {
            println!("  +{:>9.3}s {what}", at.as_secs_f64());
        }
        println!(
            "  {} decisions; {} turns answered differently from the recording",
            out.decisions.len(),
            out.differences.len()
        );
        if let Some((turn, was, now)) = out.differences.first() {
            println!("  first difference at turn {turn}: recorded {was}; replayed {now}");
        }
        differ += out.differences.len();
    }
    Ok(if check && differ > 0 {
        ExitCode::from(super::exit::ERROR)
    } else {
        ExitCode::SUCCESS
    })
}
