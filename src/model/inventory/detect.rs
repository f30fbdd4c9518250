//! Reads the node's inventory from the kernel: online CPUs and their SMT siblings (sysfs),
//! total memory (`/proc/meminfo`), and NVIDIA GPUs (the driver's `/proc` files).
//!
//! Both roots are parameters, so tests run on temp-dir fakes and the daemon passes `/sys` and
//! `/proc`. Any field can be overridden later from the daemon's config.
//!
//! GPUs: the NVIDIA driver lists one directory per GPU under `/proc/driver/nvidia/gpus/`, named
//! by PCI address, each with an `information` file whose `Model:` line names the board. GPU
//! indices follow PCI address order, which is `nvidia-smi`'s order and CUDA's when
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID` (the daemon should set it for jobs). The variant is a short
//! name matched (case-insensitively) against job requests; see [`short_variant`]. No driver
//! directory means no GPUs.

use std::io;
use std::path::{Path, PathBuf};

use crate::model::cpuset::{CpuSet, CpuSetError};
use crate::model::resources::Bytes;

use super::{Gpu, Inventory, MAX_GPUS};

/// Under the sysfs root: the online CPUs, in list format.
pub const SYS_CPU_ONLINE: &str = "devices/system/cpu/online";
/// Under the sysfs root: one `cpuN` directory per logical CPU.
pub const SYS_CPU_DIR: &str = "devices/system/cpu";
/// Under a `cpuN` directory: the CPUs sharing its physical core, in list format.
pub const THREAD_SIBLINGS_LIST: &str = "topology/thread_siblings_list";
/// Under the procfs root.
pub const PROC_MEMINFO: &str = "meminfo";
/// Under the procfs root: one directory per NVIDIA GPU.
pub const PROC_NVIDIA_GPUS: &str = "driver/nvidia/gpus";
/// Under a GPU's directory: key/value lines, `Model:` among them.
pub const NVIDIA_INFORMATION: &str = "information";

/// Why the inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    CpuList { path: PathBuf, source: CpuSetError },
    #[error("{path}: {what}")]
    Parse { path: PathBuf, what: String },
}

/// Reads the inventory from `sys_root` (normally `/sys`) and `proc_root` (normally `/proc`).
pub fn detect(sys_root: &Path, proc_root: &Path) -> Result<Inventory, DetectError> {
    let cores = cpu_list(&sys_root.join(SYS_CPU_ONLINE))?;
    Ok(Inventory {
        cores,
        memory: mem_total(&proc_root.join(PROC_MEMINFO))?,
        gpus: nvidia_gpus(&proc_root.join(PROC_NVIDIA_GPUS))?,
        smt_groups: smt_groups(&sys_root.join(SYS_CPU_DIR), &cores)?,
    })
}

fn read(path: &Path) -> Result<String, DetectError> {
    std::fs::read_to_string(path).map_err(|source| DetectError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn cpu_list(path: &Path) -> Result<CpuSet, DetectError> {
    read(path)?.parse().map_err(|source| DetectError::CpuList {
        path: path.to_path_buf(),
        source,
    })
}

/// Groups of online CPUs sharing a physical core (only groups of two or more). A CPU whose
/// topology file is missing (some virtual machines) counts as its own core.
fn smt_groups(cpu_dir: &Path, online: &CpuSet) -> Result<Vec<CpuSet>, DetectError> {
    let mut groups: Vec<CpuSet> = Vec::new();
    let mut seen = CpuSet::new();
    for cpu in online.iter() {
        if seen.contains(cpu) {
            continue;
        }
        let path = cpu_dir.join(format!("cpu{cpu}")).join(THREAD_SIBLINGS_LIST);
        let siblings = match cpu_list(&path) {
            Ok(s) => s.intersection(online),
            Err(DetectError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                continue;
            }
            Err(e) => return Err(e),
        };
        seen = seen.union(&siblings);
        if siblings.len() > 1 {
            groups.push(siblings);
        }
    }
    Ok(groups)
}

/// `MemTotal:` from meminfo (in kB there).
fn mem_total(path: &Path) -> Result<Bytes, DetectError> {
    let text = read(path)?;
    let bad = |what: &str| DetectError::Parse {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .ok_or_else(|| bad("no MemTotal line"))?;
    let mut words = line.split_whitespace();
    let kib: u64 = words
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad("MemTotal is not a number"))?;
    if words.next() != Some("kB") {
        return Err(bad("MemTotal is not in kB"));
    }
    kib.checked_mul(1024)
        .map(Bytes)
        .ok_or_else(|| bad("MemTotal is too large"))
}

fn nvidia_gpus(dir: &Path) -> Result<Vec<Gpu>, DetectError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DetectError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut buses: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|source| DetectError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
    buses.sort();
    let mut gpus = Vec::new();
    for (index, bus) in buses.iter().enumerate() {
        let path = bus.join(NVIDIA_INFORMATION);
        let index = u32::try_from(index)
            .ok()
            .filter(|&i| i < MAX_GPUS)
            .ok_or_else(|| DetectError::Parse {
                path: dir.to_path_buf(),
                what: format!("more than {MAX_GPUS} GPUs"),
            })?;
        let text = read(&path)?;
        let model = text
            .lines()
            .find_map(|l| l.strip_prefix("Model:"))
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| DetectError::Parse {
                path: path.clone(),
                what: "no Model: line".to_string(),
            })?;
        gpus.push(Gpu {
            index,
            variant: short_variant(model),
        });
    }
    Ok(gpus)
}

/// Brand words dropped from model names.
const BRANDS: [&str; 5] = ["nvidia", "tesla", "geforce", "quadro", "grid"];

/// The short variant name users write in requests, from the driver's model name: brand words
/// dropped, then words (split at blanks and `-`) up to and including the first containing a
/// digit, joined with `-`.
///
/// `NVIDIA A100-SXM4-40GB` → `A100`, `Tesla V100-SXM2-16GB` → `V100`, `NVIDIA H100 80GB HBM3` →
/// `H100`, `Tesla T4` → `T4`, `NVIDIA GeForce RTX 4090` → `RTX-4090`, `NVIDIA RTX A6000` →
/// `RTX-A6000`, `NVIDIA L40S` → `L40S`.
pub fn short_variant(model: &str) -> String {
    let words: Vec<&str> = model
        .split(|c: char| c.is_whitespace() || c == '-')
        .filter(|w| !w.is_empty() && !BRANDS.contains(&w.to_ascii_lowercase().as_str()))
        .collect();
    let end = words
        .iter()
        .position(|w| w.chars().any(|c| c.is_ascii_digit()))
        .map_or(words.len(), |i| i + 1);
    let short = words[..end].join("-");
    if short.is_empty() {
        model.trim().replace(char::is_whitespace, "-")
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A fake sysfs + procfs: `online` CPUs, sibling lists per CPU, MemTotal, GPU models.
    fn fake(
        online: &str,
        siblings: &[(usize, &str)],
        meminfo: &str,
        gpus: &[(&str, &str)],
    ) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let proc = dir.path().join("proc");
        fs::create_dir_all(sys.join(SYS_CPU_DIR)).unwrap();
        fs::create_dir_all(&proc).unwrap();
        fs::write(sys.join(SYS_CPU_ONLINE), format!("{online}\n")).unwrap();
        for (cpu, list) in siblings {
            let topo = sys
                .join(SYS_CPU_DIR)
                .join(format!("cpu{cpu}"))
                .join("topology");
            fs::create_dir_all(&topo).unwrap();
            fs::write(topo.join("thread_siblings_list"), format!("{list}\n")).unwrap();
        }
        fs::write(proc.join(PROC_MEMINFO), meminfo).unwrap();
        for (bus, model) in gpus {
            let d = proc.join(PROC_NVIDIA_GPUS).join(bus);
            fs::create_dir_all(&d).unwrap();
            fs::write(
                d.join(NVIDIA_INFORMATION),
                format!("Model: \t\t {model}\nIRQ:   \t\t 95\nBus Location: \t {bus}\n"),
            )
            .unwrap();
        }
        dir
    }

    fn run(dir: &tempfile::TempDir) -> Result<Inventory, DetectError> {
        detect(&dir.path().join("sys"), &dir.path().join("proc"))
    }

    const MEMINFO: &str = "MemTotal:       24684096 kB\nMemFree:        1000 kB\n";

    #[test]
    fn reads_cpus_siblings_memory_and_gpus() {
        let dir = fake(
            "0-3",
            &[(0, "0,2"), (1, "1,3"), (2, "0,2"), (3, "1,3")],
            MEMINFO,
            &[
                ("0000:3b:00.0", "NVIDIA A100-SXM4-40GB"),
                ("0000:1a:00.0", "Tesla T4"),
            ],
        );
        let inv = run(&dir).unwrap();
        assert_eq!(inv.cores.to_string(), "0-3");
        assert_eq!(
            inv.smt_groups,
            vec!["0,2".parse().unwrap(), "1,3".parse::<CpuSet>().unwrap()]
        );
        assert_eq!(inv.memory, Bytes(24684096 * 1024));
        // Index in PCI address order: 1a before 3b.
        assert_eq!(
            inv.gpus,
            vec![
                Gpu {
                    index: 0,
                    variant: "T4".into()
                },
                Gpu {
                    index: 1,
                    variant: "A100".into()
                },
            ]
        );
    }

    #[test]
    fn no_smt_no_topology_and_no_driver_are_fine() {
        let dir = fake("0-2", &[(0, "0"), (1, "1")], MEMINFO, &[]);
        let inv = run(&dir).unwrap();
        assert_eq!(inv.cores.len(), 3);
        assert!(inv.smt_groups.is_empty());
        assert!(inv.gpus.is_empty());
    }

    #[test]
    fn offline_siblings_are_left_out() {
        let dir = fake("0,2", &[(0, "0-1"), (2, "2-3")], MEMINFO, &[]);
        assert!(run(&dir).unwrap().smt_groups.is_empty());
    }

    #[test]
    fn errors_name_the_file() {
        let dir = fake("0-x", &[], MEMINFO, &[]);
        let err = run(&dir).unwrap_err().to_string();
        assert!(err.contains(SYS_CPU_ONLINE) && err.contains("0-x"), "{err}");
        let dir = fake("0", &[], "MemFree: 5 kB\n", &[]);
        let err = run(&dir).unwrap_err().to_string();
        assert!(err.contains("meminfo: no MemTotal line"), "{err}");
        let dir = fake("0", &[], "MemTotal: lots kB\n", &[]);
        assert!(run(&dir).unwrap_err().to_string().contains("not a number"));
        let dir = fake("0", &[], MEMINFO, &[("0000:01:00.0", "")]);
        let err = run(&dir).unwrap_err().to_string();
        assert!(err.contains("information: no Model: line"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = detect(empty.path(), empty.path()).unwrap_err();
        assert!(matches!(err, DetectError::Read { .. }));
        assert!(err.to_string().contains(SYS_CPU_ONLINE), "{err}");
    }

    #[test]
    fn variants_are_short_names() {
        for (model, short) in [
            ("NVIDIA A100-SXM4-40GB", "A100"),
            ("NVIDIA A100 80GB PCIe", "A100"),
            ("Tesla V100-SXM2-16GB", "V100"),
            ("NVIDIA H100 80GB HBM3", "H100"),
            ("Tesla T4", "T4"),
            ("NVIDIA GeForce RTX 4090", "RTX-4090"),
            ("NVIDIA RTX A6000", "RTX-A6000"),
            ("Quadro RTX 8000", "RTX-8000"),
            ("NVIDIA L40S", "L40S"),
            ("NVIDIA TITAN", "TITAN"),
            ("NVIDIA", "NVIDIA"),
        ] {
            assert_eq!(short_variant(model), short, "{model}");
            // Every short name is accepted in a GPU request.
            assert!(
                format!("{short}:1")
                    .parse::<crate::model::resources::GpuRequest>()
                    .is_ok()
            );
        }
    }
}
