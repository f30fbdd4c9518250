//! Replay: the controller turns a daemon recorded in `events.jsonl` (with
//! `controller.record_turns`), run again through a controller built the same way, with the
//! recorded thresholds or new ones. With the recorded ones every turn's answer must come out as
//! recorded (the controller is pure); with new ones the listing shows what they would have done.

use std::path::Path;
use std::time::Duration;

use crate::decide::controller::record::{HEADER_EVENT, Header, TURN_EVENT, Turn};
use crate::decide::controller::{Controller, ControllerConfig};

use super::SimError;

/// One daemon run's recording: the header, then its turns.
#[derive(Clone, Debug)]
pub struct Recording {
    pub header: Header,
    pub turns: Vec<Turn>,
}

/// A replay's outcome.
#[derive(Clone, Debug, Default)]
pub struct Replayed {
    pub turns: usize,
    /// Time since the first turn, and what was decided (a change or a note).
    pub decisions: Vec<(Duration, String)>,
    /// Turns whose answer differs from the recorded one: (turn index, recorded, replayed).
    pub differences: Vec<(usize, String, String)>,
}

fn lines(path: &Path) -> Result<Vec<(usize, serde_json::Value, String)>, SimError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let event = v
            .get("event")
            .and_then(|e| e.as_str())
            .unwrap_or("")
            .to_string();
        if event == HEADER_EVENT || event == TURN_EVENT {
            out.push((n + 1, v, event));
        }
    }
    Ok(out)
}

fn bad(path: &Path, line: usize, e: serde_json::Error) -> SimError {
    SimError::Recording {
        path: path.to_path_buf(),
        line,
        why: e.to_string(),
    }
}

/// Every recorded turn of every run in the file, in order.
pub fn read_turns(path: &Path) -> Result<Vec<Turn>, SimError> {
    lines(path)?
        .into_iter()
        .filter(|(_, _, e)| e == TURN_EVENT)
        .map(|(n, v, _)| serde_json::from_value(v).map_err(|e| bad(path, n, e)))
        .collect()
}

/// The recorded runs (one per daemon start with `record_turns`).
pub fn read(path: &Path) -> Result<Vec<Recording>, SimError> {
    let mut runs: Vec<Recording> = Vec::new();
    for (n, v, event) in lines(path)? {
        if event == HEADER_EVENT {
            let header = serde_json::from_value(v).map_err(|e| bad(path, n, e))?;
            runs.push(Recording {
                header,
                turns: Vec::new(),
            });
        } else {
            let turn = serde_json::from_value(v).map_err(|e| bad(path, n, e))?;
            let Some(run) = runs.last_mut() else {
                return Err(SimError::Recording {
                    path: path.to_path_buf(),
                    line: n,
                    why: "a controller turn before any controller header".into(),
                });
            };
            run.turns.push(turn);
        }
    }
    Ok(runs)
}

/// `base` with the keys of `overrides` (a TOML table of controller settings) replaced.
pub fn with_overrides(
    base: &ControllerConfig,
    overrides: &toml::Table,
) -> Result<ControllerConfig, SimError> {
    let mut table = toml::Table::try_from(base).map_err(|e| SimError::Config(e.to_string()))?;
    for (k, v) in overrides {
        table.insert(k.clone(), v.clone());
    }
    table
        .try_into()
        .map_err(|e: toml::de::Error| SimError::Config(format!("controller settings: {e}")))
}

/// Runs `rec`'s turns through a controller with `cfg` (the recorded config if `None`).
pub fn replay(rec: &Recording, cfg: Option<&ControllerConfig>) -> Result<Replayed, SimError> {
    let h = &rec.header;
    let cfg = cfg.unwrap_or(&h.config).clone();
    let mut c = Controller::new(cfg, h.slo_p95_us, h.cores, h.min, h.max)
        .map_err(|e| SimError::Config(e.to_string()))?;
    let t0 = rec.turns.first().map_or(0, |t| t.now_ns);
    let mut out = Replayed {
        turns: rec.turns.len(),
        ..Replayed::default()
    };
    for (i, turn) in rec.turns.iter().enumerate() {
        let inputs = turn.inputs();
        let d = c.step(&inputs);
        let got = Turn::new(&inputs, &d);
        let at = Duration::from_nanos(turn.now_ns.saturating_sub(t0));
        if let Some(ch) = &got.change {
            out.decisions.push((at, ch.clone()));
        }
        if let Some(note) = &d.note {
            out.decisions.push((at, format!("note: {note}")));
        }
        if (got.rung, got.share, &got.change) != (turn.rung, turn.share, &turn.change) {
            let show = |t: &Turn| {
                format!(
                    "rung {} share {} {}",
                    t.rung,
                    t.share,
                    t.change.as_deref().unwrap_or("-")
                )
            };
            out.differences.push((i, show(turn), show(&got)));
        }
    }
    Ok(out)
}
