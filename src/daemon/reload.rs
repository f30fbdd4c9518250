//! SIGHUP: reopen the log files (for logrotate), re-read the config file, apply what can change
//! while jobs run, and say what changed and what needs a restart.
//!
//! Problem: a config is one big tree and most of it is read once at start-up (the socket, the
//! cgroup root, the samplers' periods, the probe), while the policy, the controller's
//! thresholds, the log level and the submit limits can change at any time.
//!
//! Approach: both configs become TOML trees and are compared key by key (dotted names, as the
//! file spells them). A changed key is *live* when it is in [`LIVE`]; live keys are applied
//! (the policy and the limits here, the controller's thresholds, the policy tick and the
//! fair-share half-life by the control loop, through [`Op::Reload`]), every other change is
//! logged as needing a restart and kept at its running value, so the next SIGHUP reports it
//! again until the daemon restarts. A config that does not load is refused whole: the running
//! one stays.

use std::sync::Arc;
use std::time::Duration;

use crate::decide::controller::ControllerConfig;

use super::config::{Config, Overrides};
use super::shared::{Op, Shared};

/// Keys (exact, or a section ending in `.`) that apply without a restart.
const LIVE: &[&str] = &[
    "log_level",
    "policy.",
    "controller.",
    "jobs.max_jobs_per_user",
    "jobs.max_queued",
];

/// Keys under a live section that still need a restart: the controller's core ladder is built
/// once from `share_when_idle`.
const NOT_LIVE: &[&str] = &["controller.share_when_idle"];

/// What the control loop takes on a reload.
#[derive(Debug, Clone)]
pub struct LiveControl {
    pub controller: ControllerConfig,
    pub policy_tick: Duration,
    pub fair_share_half_life: Duration,
}

/// One key whose value differs, with both values as TOML text (`(unset)` when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub key: String,
    pub old: String,
    pub new: String,
}

impl Changed {
    fn line(&self) -> String {
        format!("{} {} -> {}", self.key, self.old, self.new)
    }
}

/// Whether a change of `key` applies without a restart.
pub fn is_live(key: &str) -> bool {
    !NOT_LIVE.contains(&key)
        && LIVE.iter().any(|l| match l.strip_suffix('.') {
            Some(section) => key
                .strip_prefix(section)
                .is_some_and(|r| r.starts_with('.')),
            None => key == *l,
        })
}

/// Every key whose value differs between `old` and `new`, in the tree's (sorted) order.
pub fn diff(old: &Config, new: &Config) -> Vec<Changed> {
    let (Ok(a), Ok(b)) = (toml::Value::try_from(old), toml::Value::try_from(new)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk("", Some(&a), Some(&b), &mut out);
    out
}

fn walk(key: &str, a: Option<&toml::Value>, b: Option<&toml::Value>, out: &mut Vec<Changed>) {
    if let (Some(toml::Value::Table(ta)), Some(toml::Value::Table(tb))) = (a, b) {
        let mut keys: Vec<&String> = ta.keys().chain(tb.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let sub = if key.is_empty() {
                k.clone()
            } else {
                format!("{key}.{k}")
            };
            walk(&sub, ta.get(k), tb.get(k), out);
        }
        return;
    }
    if a != b {
        let text = |v: Option<&toml::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
        out.push(Changed {
            key: key.to_string(),
            old: text(a),
            new: text(b),
        });
    }
}

/// `new` with every key of `keep` set back to its value in `old`: what the daemon runs with.
fn running(old: &Config, new: &Config, keep: &[Changed]) -> Config {
    let (Ok(mut tree), Ok(before)) = (toml::Value::try_from(new), toml::Value::try_from(old))
    else {
        return old.clone();
    };
    for c in keep {
        let path: Vec<&str> = c.key.split('.').collect();
        let was = lookup(&before, &path).cloned();
        set(&mut tree, &path, was);
    }
    tree.try_into().unwrap_or_else(|_| old.clone())
}

fn lookup<'v>(v: &'v toml::Value, path: &[&str]) -> Option<&'v toml::Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn set(v: &mut toml::Value, path: &[&str], to: Option<toml::Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = v;
    for k in parents {
        match at.get_mut(*k) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Some(table) = at.as_table_mut() {
        match to {
            Some(x) => table.insert((*last).to_string(), x),
            None => table.remove(*last),
        };
    }
}

/// The signal thread's side of a reload: the config the daemon runs with, and how to read the
/// file again.
#[derive(Debug)]
pub struct Reloader {
    overrides: Overrides,
    current: Config,
}

impl Reloader {
    pub fn new(overrides: Overrides, current: Config) -> Self {
        Self { overrides, current }
    }

    /// Everything SIGHUP does.
    pub fn hangup(&mut self, shared: &Shared) {
        match shared.jobs.events().reopen() {
            Ok(()) => crate::log::info("SIGHUP: event logs reopened"),
            Err(e) => crate::log::error(&format!("SIGHUP: {e}; events go to the old files")),
        }
        shared.reopen_history();
        let new = match Config::load(&self.overrides) {
            Ok((cfg, _)) => cfg,
            Err(e) => {
                crate::log::error(&format!(
                    "SIGHUP: config not reloaded, nothing changed: {e}"
                ));
                return;
            }
        };
        let changes = diff(&self.current, &new);
        if changes.is_empty() {
            crate::log::info("SIGHUP: config unchanged");
            return;
        }
        let (live, restart): (Vec<Changed>, Vec<Changed>) =
            changes.into_iter().partition(|c| is_live(&c.key));
        let applied = running(&self.current, &new, &restart);
        if let Err(e) = apply(shared, &applied) {
            crate::log::error(&format!(
                "SIGHUP: config not reloaded, nothing changed: {e}"
            ));
            return;
        }
        for c in &live {
            crate::log::notice(&format!("SIGHUP: applied {}", c.line()));
        }
        if !restart.is_empty() {
            let lines: Vec<String> = restart.iter().map(Changed::line).collect();
            crate::log::warn(&format!(
                "SIGHUP: needs a restart to take effect (running with the old values): {}",
                lines.join("; ")
            ));
        }
        self.current = applied;
    }
}

/// Applies the live part of `cfg`: checked first, so a failure changes nothing.
fn apply(shared: &Shared, cfg: &Config) -> Result<(), String> {
    let level = crate::log::parse_level(&cfg.log_level)
        .ok_or_else(|| format!("log_level {}: unknown level", cfg.log_level))?;
    let policy_cfg = cfg.policy.policy_config()?;
    let policy =
        crate::decide::policy::by_name(&cfg.policy.name, &policy_cfg).map_err(|e| e.to_string())?;
    let live = LiveControl {
        controller: cfg.controller.clone(),
        policy_tick: Duration::from_millis(cfg.policy.tick_ms),
        fair_share_half_life: cfg.policy.fair_share_half_life()?,
    };
    crate::log::set_level(level);
    shared.set_policy(Arc::from(policy));
    *shared.limits.write().unwrap_or_else(|p| p.into_inner()) = cfg.submit_limits();
    let _ = shared.ops.send(Op::Reload(Box::new(live)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_are_the_policy_controller_log_level_and_limits() {
        for key in [
            "log_level",
            "policy.name",
            "controller.grow_util",
            "jobs.max_queued",
        ] {
            assert!(is_live(key), "{key}");
        }
        for key in [
            "socket",
            "policyx.name",
            "controller.share_when_idle",
            "jobs.umask",
            "jobs.max_queued_x",
            "sampler.period_ms",
        ] {
            assert!(!is_live(key), "{key}");
        }
    }

    #[test]
    fn diff_names_each_changed_key_with_both_values() {
        let old = Config::default();
        let mut new = old.clone();
        new.policy.name = "fifo".into();
        new.controller.grow_util = 0.5;
        new.sampler.period_ms = 7;
        new.jobs.output_dir = Some("/tmp/out".into());
        let d = diff(&old, &new);
        let keys: Vec<&str> = d.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "controller.grow_util",
                "jobs.output_dir",
                "policy.name",
                "sampler.period_ms"
            ]
        );
        let name = d.iter().find(|c| c.key == "policy.name").unwrap();
        assert_eq!(name.line(), "policy.name \"priority\" -> \"fifo\"");
        assert_eq!(d[1].old, "(unset)");
        assert!(diff(&old, &old.clone()).is_empty());
    }

    #[test]
    fn restart_only_keys_keep_their_running_values() {
        let old = Config::default();
        let mut new = old.clone();
        new.policy.name = "fifo".into();
        new.sampler.period_ms = 7;
        new.jobs.output_dir = Some("/tmp/out".into());
        let restart: Vec<Changed> = diff(&old, &new)
            .into_iter()
            .filter(|c| !is_live(&c.key))
            .collect();
        let run = running(&old, &new, &restart);
        assert_eq!(run.policy.name, "fifo");
        assert_eq!(run.sampler.period_ms, old.sampler.period_ms);
        assert_eq!(run.jobs.output_dir, None);
        // So the next reload of the same file reports the restart-only keys again.
        let again: Vec<String> = diff(&run, &new).into_iter().map(|c| c.key).collect();
        assert_eq!(again, ["jobs.output_dir", "sampler.period_ms"]);
    }
}
