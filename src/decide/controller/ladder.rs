//! The controller's rungs: the allocations it moves between, from "service on its minimum cores,
//! shared with batch" up to "service alone on its maximum cores".

use crate::model::cpuset::CpuSet;

/// One rung: where the service runs and what batch may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub rung: usize,
    /// The service's cpuset.
    pub service: CpuSet,
    /// What the batch side may use. Overlaps `service` only on a shared rung.
    pub batch: CpuSet,
    /// The service's cores are its own (batch is kept off them).
    pub exclusive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LadderError {
    #[error(
        "service core range {min}..={max} is invalid for {available} cores (need 1 <= min <= max <= cores)"
    )]
    Range {
        min: usize,
        max: usize,
        available: usize,
    },
}

/// The rungs for a service allowed `min..=max` of `cores`, taking the lowest-numbered cores
/// first. With `share`, the bottom rung lets batch use the service's `min` cores too.
pub fn ladder(
    cores: CpuSet,
    min: usize,
    max: usize,
    share: bool,
) -> Result<Vec<Allocation>, LadderError> {
    let available = cores.len();
    if min == 0 || min > max || max > available {
        return Err(LadderError::Range {
            min,
            max,
            available,
        });
    }
    let mut rungs = Vec::new();
    if share {
        rungs.push(Allocation {
            rung: 0,
            service: cores.lowest(min),
            batch: cores,
            exclusive: false,
        });
    }
    for k in min..=max {
        let service = cores.lowest(k);
        rungs.push(Allocation {
            rung: rungs.len(),
            service,
            batch: cores.difference(&service),
            exclusive: true,
        });
    }
    Ok(rungs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_on_two_cores() {
        let r = ladder("0-1".parse().unwrap(), 1, 2, true).unwrap();
        let view: Vec<(String, String, bool)> = r
            .iter()
            .map(|a| (a.service.to_string(), a.batch.to_string(), a.exclusive))
            .collect();
        assert_eq!(
            view,
            [
                ("0".into(), "0-1".into(), false),
                ("0".into(), "1".into(), true),
                ("0-1".into(), "".into(), true)
            ]
        );
        assert_eq!(
            ladder("0-1".parse().unwrap(), 1, 1, false).unwrap().len(),
            1
        );
    }

    #[test]
    fn bad_ranges_are_refused() {
        let cores: CpuSet = "0-3".parse().unwrap();
        assert!(ladder(cores, 0, 2, true).is_err());
        assert!(ladder(cores, 3, 2, true).is_err());
        assert!(ladder(cores, 1, 5, true).is_err());
    }
}
