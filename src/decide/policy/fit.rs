//! Submit-time check: refuses a job that could never fit this node, naming what and how much.
//!
//! "Never" means in no state this node's configuration allows: more cores than batch can ever
//! be granted ([`batch_ceiling`]), more memory than the node gives batch jobs, more GPUs (of the
//! asked variant) than it has. Whether it fits *now* is the policy's business, not this check's.
//!
//! The problem is a service that may come and go. The policy only ever sees the batch cores the
//! SLO controller grants: every managed core while no service runs, the managed cores minus the
//! service's share (at least `min_cores`) while one does. So:
//! - `service.enabled = no`: batch may always have every core; the ceiling is all of them.
//! - `auto`: the service is optional. A job as wide as the node is accepted: it starts while no
//!   service runs, and while one does it waits (or is paused) like any job that does not fit
//!   now. Refusing it would refuse work the policy would start.
//! - `yes`: the service is part of the node and always gets its `min_cores` once it runs; the
//!   windows where it is down (before it starts, while it restarts) do not count. The ceiling is
//!   the managed cores minus `min_cores`: a job wider than that could only run in such a window
//!   and be paused for good when the service comes back, so it is refused.

use std::collections::BTreeMap;

use crate::model::inventory::Inventory;
use crate::model::job::JobSpec;
use crate::model::resources::Bytes;

/// What the job asks for beyond what the node could ever give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    #[error(
        "the job needs at least {min} cores, but batch jobs can get at most {max} on this node{why}",
        why = keeps_note(*service_keeps)
    )]
    Cores {
        min: u32,
        max: usize,
        /// Cores the protected service always keeps (0 when it is optional or disabled).
        service_keeps: usize,
    },
    #[error("the job needs {need} of memory, but this node has {node} for batch jobs")]
    Memory { need: Bytes, node: Bytes },
    #[error(
        "the job needs {need} {what}, but this node has {have} (its GPUs: {inventory})",
        what = gpu_noun(variant.as_deref())
    )]
    Gpus {
        need: u32,
        variant: Option<String>,
        have: usize,
        /// What the node has, e.g. `2 A100, 1 T4` or `none`.
        inventory: String,
    },
}

fn keeps_note(keeps: usize) -> String {
    match keeps {
        0 => String::new(),
        n => format!(" (service.enabled = yes: the protected service always keeps {n})"),
    }
}

/// Whether, per the config, a protected service may take cores from batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceClaim {
    /// No service (`enabled = no`).
    None,
    /// A service may run, or may not (`enabled = auto`).
    Optional,
    /// A service is always expected, and keeps at least `min_cores` (`enabled = yes`).
    Always { min_cores: usize },
}

/// The most cores batch jobs can ever hold together (see the module note for why).
pub fn batch_ceiling(managed: usize, claim: ServiceClaim) -> usize {
    match claim {
        ServiceClaim::None | ServiceClaim::Optional => managed,
        ServiceClaim::Always { min_cores } => managed.saturating_sub(min_cores),
    }
}

/// Cores the service always keeps under `claim`, for error messages.
fn kept(claim: ServiceClaim) -> usize {
    match claim {
        ServiceClaim::Always { min_cores } => min_cores,
        _ => 0,
    }
}

fn gpu_noun(variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{v} GPUs"),
        None => "GPUs".to_string(),
    }
}

/// Refuses `spec` if it can never fit `node`, where the service claims cores as `claim` says.
pub fn check(spec: &JobSpec, node: &Inventory, claim: ServiceClaim) -> Result<(), FitError> {
    let max = batch_ceiling(node.cores.len(), claim);
    if spec.cores.min as usize > max {
        return Err(FitError::Cores {
            min: spec.cores.min,
            max,
            service_keeps: kept(claim),
        });
    }
    if let Some(need) = spec.memory {
        if need > node.memory {
            return Err(FitError::Memory {
                need,
                node: node.memory,
            });
        }
    }
    let need = spec.gpus.count;
    if need > 0 {
        let variant = spec.gpus.variant.as_deref();
        let have = node.gpus_of(node.all_gpus(), variant).len();
        if need as usize > have {
            return Err(FitError::Gpus {
                need,
                variant: spec.gpus.variant.clone(),
                have,
                inventory: describe_gpus(node),
            });
        }
    }
    Ok(())
}

/// `2 A100, 1 T4`, or `none`.
fn describe_gpus(node: &Inventory) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for g in &node.gpus {
        *counts.entry(g.variant.as_str()).or_default() += 1;
    }
    if counts.is_empty() {
        return "none".to_string();
    }
    counts
        .iter()
        .map(|(v, n)| format!("{n} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inventory::Gpu;
    use crate::model::resources::CoreRange;

    fn node() -> Inventory {
        let mut node = Inventory::simple("0-7".parse().unwrap(), "16G".parse().unwrap());
        node.gpus = vec![
            Gpu {
                index: 0,
                variant: "A100".into(),
            },
            Gpu {
                index: 1,
                variant: "T4".into(),
            },
            Gpu {
                index: 2,
                variant: "A100".into(),
            },
        ];
        node
    }

    fn job() -> JobSpec {
        JobSpec::new(vec!["true".into()])
    }

    #[test]
    fn a_job_that_fits_the_whole_node_passes() {
        let mut s = job();
        s.cores = CoreRange { min: 6, max: 64 };
        s.memory = Some("16G".parse().unwrap());
        s.gpus = "a100:2".parse().unwrap();
        assert_eq!(check(&s, &node(), ALWAYS_2), Ok(()));
    }

    const ALWAYS_2: ServiceClaim = ServiceClaim::Always { min_cores: 2 };

    #[test]
    fn an_optional_service_leaves_every_core_to_batch() {
        // The case: `enabled = auto`, 2 cores, a job asking for both.
        let two = Inventory::simple("0-1".parse().unwrap(), "1G".parse().unwrap());
        let mut s = job();
        s.cores = CoreRange::exactly(2);
        assert_eq!(check(&s, &two, ServiceClaim::Optional), Ok(()));
        assert_eq!(check(&s, &two, ServiceClaim::None), Ok(()));
        let err = check(&s, &two, ServiceClaim::Always { min_cores: 1 }).unwrap_err();
        assert!(err.to_string().contains("always keeps 1"), "{err}");
        s.cores = CoreRange::exactly(3);
        let err = check(&s, &two, ServiceClaim::Optional).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the job needs at least 3 cores, but batch jobs can get at most 2 on this node"
        );
    }

    #[test]
    fn the_ceiling_is_what_the_controller_can_leave_batch() {
        for managed in 1..=8 {
            assert_eq!(batch_ceiling(managed, ServiceClaim::None), managed);
            assert_eq!(batch_ceiling(managed, ServiceClaim::Optional), managed);
            for min_cores in 1..=managed {
                let c = batch_ceiling(managed, ServiceClaim::Always { min_cores });
                assert_eq!(c + min_cores, managed);
            }
        }
    }

    #[test]
    fn too_many_cores_names_both_counts() {
        let mut s = job();
        s.cores = CoreRange::exactly(7);
        let err = check(&s, &node(), ALWAYS_2).unwrap_err();
        assert_eq!(
            err,
            FitError::Cores {
                min: 7,
                max: 6,
                service_keeps: 2
            }
        );
        assert!(err.to_string().contains("at least 7 cores"), "{err}");
        assert!(err.to_string().contains("at most 6"), "{err}");
        // Without a service the node's own core count is the cap.
        s.cores = CoreRange::exactly(9);
        assert_eq!(
            check(&s, &node(), ServiceClaim::None),
            Err(FitError::Cores {
                min: 9,
                max: 8,
                service_keeps: 0
            })
        );
    }

    #[test]
    fn too_much_memory_names_both_sizes() {
        let mut s = job();
        s.memory = Some("17G".parse().unwrap());
        let err = check(&s, &node(), ServiceClaim::None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the job needs 17G of memory, but this node has 16G for batch jobs"
        );
    }

    #[test]
    fn gpus_are_counted_per_variant() {
        let mut s = job();
        s.gpus = "T4:2".parse().unwrap();
        let err = check(&s, &node(), ServiceClaim::None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the job needs 2 T4 GPUs, but this node has 1 (its GPUs: 2 A100, 1 T4)"
        );
        s.gpus = "H100".parse().unwrap();
        assert!(matches!(
            check(&s, &node(), ServiceClaim::None),
            Err(FitError::Gpus { have: 0, .. })
        ));
        s.gpus = "3".parse().unwrap();
        assert_eq!(check(&s, &node(), ServiceClaim::None), Ok(()));
        s.gpus = "4".parse().unwrap();
        let plain = Inventory::simple("0".parse().unwrap(), Bytes(1 << 30));
        let err = check(&s, &plain, ServiceClaim::None).unwrap_err();
        assert!(err.to_string().ends_with("has 0 (its GPUs: none)"), "{err}");
    }
}
