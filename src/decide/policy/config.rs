//! Policy settings (the `[policy]` table of the daemon's TOML config) and the by-name builder.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Policy;
use super::adaptive::Adaptive;
use super::rank::{Order, Ranked};

/// Names [`by_name`] accepts, in the order help texts list them.
pub const NAMES: [&str; 6] = ["fifo", "priority", "sjf", "ljf", "edf", "adaptive"];

/// Settings shared by every policy. Every field has a default, so an empty table is valid.
/// Durations are seconds (fractions allowed).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Starvation guard: a pending job that has waited longer than this (since submission) and
    /// does not fit gets a reservation: jobs ranked below it may not start on the cores, memory
    /// and GPUs it needs. 0 reserves for every job that does not fit (no backfill past a blocked
    /// job). Default 300 s.
    #[serde(with = "seconds")]
    pub starvation_age: Duration,
    /// `adaptive`: a pending job's deadline is at risk when `now + estimate + deadline_slack`
    /// reaches it (a job without an estimate counts as taking no time). Default 60 s.
    #[serde(with = "seconds")]
    pub deadline_slack: Duration,
    /// `adaptive`: switch to `sjf` when at least this many pending jobs carry an estimate.
    /// Default 8.
    pub sjf_backlog: usize,
    /// Interleave different users' pending jobs of equal rank, least recent use of cores first
    /// ([`crate::decide::fairshare`]); false keeps plain submission order. Default true.
    pub fair_share: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            starvation_age: Duration::from_secs(300),
            deadline_slack: Duration::from_secs(60),
            sjf_backlog: 8,
            fair_share: true,
        }
    }
}

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown policy {}: valid policies are {valid}", crate::model::text::quoted(.name), valid = NAMES.join(", "))]
    Unknown { name: String },
}

/// Builds the policy users call `name` (case-insensitive, surrounding blanks ignored).
pub fn by_name(name: &str, cfg: &PolicyConfig) -> Result<Box<dyn Policy>, PolicyError> {
    let cfg = cfg.clone();
    let wanted = name.trim().to_ascii_lowercase();
    if wanted == "adaptive" {
        return Ok(Box::new(Adaptive::new(cfg)));
    }
    match Order::by_name(&wanted) {
        Some(order) => Ok(Box::new(Ranked::new(order, cfg))),
        None => Err(PolicyError::Unknown {
            name: name.to_string(),
        }),
    }
}

/// Serde for a `Duration` as (fractional) seconds.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(|_| {
            serde::de::Error::custom(format!(
                "{v} is not a valid number of seconds (need a finite value >= 0)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_builds_its_policy() {
        let cfg = PolicyConfig::default();
        for name in NAMES {
            assert_eq!(by_name(name, &cfg).unwrap().name(), name);
        }
        assert_eq!(by_name(" EDF ", &cfg).unwrap().name(), "edf");
    }

    #[test]
    fn every_order_is_listed_by_its_name() {
        for order in Order::ALL {
            assert!(NAMES.contains(&order.name()), "{order:?}");
            assert_eq!(Order::by_name(order.name()), Some(order));
        }
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let err = by_name("lottery", &PolicyConfig::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"lottery\""), "{text}");
        for name in NAMES {
            assert!(text.contains(name), "{text}");
        }
    }

    #[test]
    fn config_loads_from_toml_with_defaults() {
        let cfg: PolicyConfig = toml::from_str("starvation_age = 1.5").unwrap();
        assert_eq!(cfg.starvation_age, Duration::from_millis(1500));
        assert_eq!(cfg.sjf_backlog, PolicyConfig::default().sjf_backlog);
        let empty: PolicyConfig = toml::from_str("").unwrap();
        assert_eq!(empty, PolicyConfig::default());
        let back: PolicyConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let err = toml::from_str::<PolicyConfig>("starvation_age = -1").unwrap_err();
        assert!(err.to_string().contains("-1"), "{err}");
        let err = toml::from_str::<PolicyConfig>("starve = 1").unwrap_err();
        assert!(err.to_string().contains("starve"), "{err}");
    }
}
