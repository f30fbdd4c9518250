//! What the node has to hand out: logical cores and their SMT siblings, memory, GPUs by variant.

pub mod detect;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::cpuset::CpuSet;
use crate::model::resources::Bytes;

pub use detect::{DetectError, detect};

/// Most GPUs one node can list.
pub const MAX_GPUS: u32 = 64;

/// One GPU: its index (as `CUDA_VISIBLE_DEVICES` counts) and model name, e.g. `A100`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub variant: String,
}

/// A set of GPU indices (below [`MAX_GPUS`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GpuSet(pub u64);

impl GpuSet {
    pub fn insert(&mut self, index: u32) {
        if index < MAX_GPUS {
            self.0 |= 1 << index;
        }
    }

    pub fn contains(self, index: u32) -> bool {
        index < MAX_GPUS && self.0 & (1 << index) != 0
    }

    pub fn union(self, other: GpuSet) -> GpuSet {
        GpuSet(self.0 | other.0)
    }

    pub fn difference(self, other: GpuSet) -> GpuSet {
        GpuSet(self.0 & !other.0)
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..MAX_GPUS).filter(move |&i| self.contains(i))
    }
}

/// `0,2,3`: the form `CUDA_VISIBLE_DEVICES` takes.
impl fmt::Display for GpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.iter().map(|i| i.to_string()).collect();
        f.write_str(&ids.join(","))
    }
}

impl fmt::Debug for GpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuSet({self})")
    }
}

/// The node's resources. Read from the host at start-up; any field can be overridden by config.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Inventory {
    /// Online logical CPUs.
    pub cores: CpuSet,
    /// Memory batch jobs may claim in total.
    pub memory: Bytes,
    pub gpus: Vec<Gpu>,
    /// Groups of logical CPUs that share one physical core (SMT siblings). CPUs in no group are
    /// their own physical core.
    #[serde(default)]
    pub smt_groups: Vec<CpuSet>,
}

impl Inventory {
    /// A node with `cores` cores, `memory` bytes, no GPUs and no SMT.
    pub fn simple(cores: CpuSet, memory: Bytes) -> Self {
        Self {
            cores,
            memory,
            gpus: Vec::new(),
            smt_groups: Vec::new(),
        }
    }

    pub fn all_gpus(&self) -> GpuSet {
        let mut set = GpuSet::default();
        for g in &self.gpus {
            set.insert(g.index);
        }
        set
    }

    /// GPUs in `set` of the given variant (all of `set` when `variant` is `None`).
    pub fn gpus_of(&self, set: GpuSet, variant: Option<&str>) -> GpuSet {
        let mut out = GpuSet::default();
        for g in &self.gpus {
            if set.contains(g.index) && variant.is_none_or(|v| v.eq_ignore_ascii_case(&g.variant)) {
                out.insert(g.index);
            }
        }
        out
    }

    /// The logical CPUs sharing a physical core with any CPU of `cpus`, `cpus` included.
    pub fn physical_cores_of(&self, cpus: &CpuSet) -> CpuSet {
        self.smt_groups
            .iter()
            .filter(|g| !g.is_disjoint(cpus))
            .fold(*cpus, |acc, g| acc.union(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_sets_and_variants() {
        let node = Inventory {
            cores: "0-3".parse().unwrap(),
            memory: Bytes(1 << 30),
            gpus: vec![
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
            ],
            smt_groups: vec!["0,2".parse().unwrap(), "1,3".parse().unwrap()],
        };
        let all = node.all_gpus();
        assert_eq!(all.to_string(), "0,1,2");
        assert_eq!(node.gpus_of(all, Some("a100")).to_string(), "0,2");
        assert_eq!(node.gpus_of(all, None), all);
        assert_eq!(
            node.physical_cores_of(&"0".parse().unwrap()).to_string(),
            "0,2"
        );
        assert_eq!(node.physical_cores_of(&CpuSet::new()), CpuSet::new());
    }
}
