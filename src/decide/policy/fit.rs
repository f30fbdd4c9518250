//! Submit-time check: refuses a job that could never fit this node, naming what and how much.
//!
//! "Never" means even with the whole node to itself: more cores than batch can ever be granted,
//! more memory than the node gives batch jobs, more GPUs (of the asked variant) than it has.
//! Whether it fits *now* is the policy's business, not this check's.

use std::collections::BTreeMap;

use crate::model::inventory::Inventory;
use crate::model::job::JobSpec;
use crate::model::resources::Bytes;

/// What the job asks for beyond what the node could ever give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    #[error(
        "the job needs at least {min} cores, but batch jobs can get at most {max} on this node"
    )]
    Cores { min: u32, max: usize },
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

fn gpu_noun(variant: Option<&str>) -> String {
    match variant {
        Some(v) => format!("{v} GPUs"),
        None => "GPUs".to_string(),
    }
}

/// Refuses `spec` if it can never fit `node`, where batch jobs are granted at most
/// `batch_max_cores` cores (the node's cores minus what the protected service always keeps).
pub fn check(spec: &JobSpec, node: &Inventory, batch_max_cores: usize) -> Result<(), FitError> {
    let max = batch_max_cores.min(node.cores.len());
    if spec.cores.min as usize > max {
        return Err(FitError::Cores {
            min: spec.cores.min,
            max,
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
        assert_eq!(check(&s, &node(), 6), Ok(()));
    }

    #[test]
    fn too_many_cores_names_both_counts() {
        let mut s = job();
        s.cores = CoreRange::exactly(7);
        let err = check(&s, &node(), 6).unwrap_err();
        assert_eq!(err, FitError::Cores { min: 7, max: 6 });
        assert!(err.to_string().contains("at least 7 cores"), "{err}");
        assert!(err.to_string().contains("at most 6"), "{err}");
        // The node's own core count caps a generous batch maximum.
        s.cores = CoreRange::exactly(9);
        assert_eq!(
            check(&s, &node(), 100),
            Err(FitError::Cores { min: 9, max: 8 })
        );
    }

    #[test]
    fn too_much_memory_names_both_sizes() {
        let mut s = job();
        s.memory = Some("17G".parse().unwrap());
        let err = check(&s, &node(), 8).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the job needs 17G of memory, but this node has 16G for batch jobs"
        );
    }

    #[test]
    fn gpus_are_counted_per_variant() {
        let mut s = job();
        s.gpus = "T4:2".parse().unwrap();
        let err = check(&s, &node(), 8).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the job needs 2 T4 GPUs, but this node has 1 (its GPUs: 2 A100, 1 T4)"
        );
        s.gpus = "H100".parse().unwrap();
        assert!(matches!(
            check(&s, &node(), 8),
            Err(FitError::Gpus { have: 0, .. })
        ));
        s.gpus = "3".parse().unwrap();
        assert_eq!(check(&s, &node(), 8), Ok(()));
        s.gpus = "4".parse().unwrap();
        let plain = Inventory::simple("0".parse().unwrap(), Bytes(1 << 30));
        let err = check(&s, &plain, 1).unwrap_err();
        assert!(err.to_string().ends_with("has 0 (its GPUs: none)"), "{err}");
    }
}
