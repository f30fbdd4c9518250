//! Load traces for the simulator: a synthetic diurnal day, a `seconds qps` file (the e2e
//! bench's format), or the QPS a running daemon recorded in its `events.jsonl` turns.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SimError;

/// Where the load comes from (the `[trace]` table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum TraceConfig {
    /// A day compressed into `day_s`: QPS goes from `trough_qps` (at 0) to `peak_qps` (at
    /// `day_s / 2`) and back on a raised cosine, repeated for `days`.
    Diurnal {
        trough_qps: f64,
        peak_qps: f64,
        day_s: f64,
        #[serde(default = "one")]
        days: f64,
    },
    /// Constant load for `duration_s`.
    Constant { qps: f64, duration_s: f64 },
    /// `seconds qps` lines (`#` comments), held until the next line; scaled by `scale`.
    File {
        path: PathBuf,
        #[serde(default = "one")]
        scale: f64,
    },
    /// The `qps` of each recorded controller turn in a daemon's `events.jsonl`.
    Events {
        path: PathBuf,
        #[serde(default = "one")]
        scale: f64,
    },
}

fn one() -> f64 {
    1.0
}

/// A load trace: QPS as a step function of time.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// (start second, QPS), sorted by time.
    steps: Vec<(f64, f64)>,
    duration_s: f64,
}

impl Trace {
    pub fn load(cfg: &TraceConfig) -> Result<Trace, SimError> {
        match cfg {
            TraceConfig::Diurnal {
                trough_qps,
                peak_qps,
                day_s,
                days,
            } => {
                let duration_s = day_s * days;
                let steps = (0..duration_s.ceil() as usize)
                    .map(|s| {
                        let phase = (s as f64 % day_s) / day_s;
                        let q = trough_qps
                            + (peak_qps - trough_qps) * (1.0 - (2.0 * PI * phase).cos()) / 2.0;
                        (s as f64, q)
                    })
                    .collect();
                Ok(Trace { steps, duration_s })
            }
            TraceConfig::Constant { qps, duration_s } => Ok(Trace {
                steps: vec![(0.0, *qps)],
                duration_s: *duration_s,
            }),
            TraceConfig::File { path, scale } => Self::from_text(path, *scale),
            TraceConfig::Events { path, scale } => Self::from_events(path, *scale),
        }
    }

    fn from_text(path: &Path, scale: f64) -> Result<Trace, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut steps = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut f = line.split_whitespace().map(str::parse::<f64>);
            match (f.next(), f.next()) {
                (Some(Ok(t)), Some(Ok(q))) if t >= 0.0 && q >= 0.0 => steps.push((t, q * scale)),
                _ => {
                    return Err(SimError::Trace {
                        path: path.to_path_buf(),
                        line: n + 1,
                        why: "expected `seconds qps` (two non-negative numbers)".into(),
                    });
                }
            }
        }
        Self::from_steps(path, steps, 1.0)
    }

    fn from_events(path: &Path, scale: f64) -> Result<Trace, SimError> {
        let turns = super::replay::read_turns(path)?;
        let t0 = turns.first().map_or(0, |t| t.now_ns);
        let steps = turns
            .iter()
            .filter_map(|t| Some(((t.now_ns - t0) as f64 * 1e-9, t.qps? * scale)))
            .collect();
        Self::from_steps(path, steps, 0.05)
    }

    fn from_steps(path: &Path, steps: Vec<(f64, f64)>, last_s: f64) -> Result<Trace, SimError> {
        if steps.is_empty() || steps.windows(2).any(|w| w[1].0 < w[0].0) {
            return Err(SimError::Trace {
                path: path.to_path_buf(),
                line: 0,
                why: "no load steps, or times out of order".into(),
            });
        }
        let duration_s = steps.last().map_or(0.0, |s| s.0) + last_s;
        Ok(Trace { steps, duration_s })
    }

    pub fn duration_s(&self) -> f64 {
        self.duration_s
    }

    /// QPS at `t` seconds; the trace repeats after its end.
    pub fn qps(&self, t: f64) -> f64 {
        let t = t % self.duration_s.max(1e-9);
        let i = self.steps.partition_point(|s| s.0 <= t);
        self.steps[i.saturating_sub(1)].1
    }
}

/// A small deterministic random source (SplitMix64): the same seed gives the same run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn signed(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diurnal_peaks_at_midday_and_repeats() {
        let t = Trace::load(&TraceConfig::Diurnal {
            trough_qps: 1_000.0,
            peak_qps: 9_000.0,
            day_s: 100.0,
            days: 2.0,
        })
        .unwrap();
        assert_eq!(t.qps(0.0), 1_000.0);
        assert!((t.qps(50.0) - 9_000.0).abs() < 1.0);
        assert_eq!(t.qps(150.5), t.qps(150.0));
        assert_eq!(t.duration_s(), 200.0);
    }

    #[test]
    fn a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "# c\n0 100\n1 x\n").unwrap();
        let err = Trace::load(&TraceConfig::File { path, scale: 1.0 }).unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
    }
}
