#![allow(clippy::unwrap_used)]
//! Inventory detection: on this machine's real /sys and /proc, checked against sources the
//! detector does not read (/proc/cpuinfo's topology, sysinfo(2)); and on a fake sysfs and procfs
//! laid out like a two-socket SMT server with NVIDIA GPUs, in the kernel's and the driver's
//! own formats.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use lowsched::model::cpuset::CpuSet;
use lowsched::model::inventory::detect;

/// Online CPUs and SMT groups as /proc/cpuinfo describes them: logical CPUs that share a
/// (`physical id`, `core id`) are siblings.
fn cpuinfo_topology() -> (CpuSet, Vec<CpuSet>) {
    let text = fs::read_to_string("/proc/cpuinfo").unwrap();
    let mut cores = CpuSet::default();
    let mut by_core: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        let cpu: usize = field("processor").unwrap().parse().unwrap();
        cores.insert(cpu);
        let key = (
            field("physical id").unwrap_or_default(),
            field("core id").unwrap_or_else(|| cpu.to_string()),
        );
        by_core.entry(key).or_default().push(cpu);
    }
    let mut groups: Vec<CpuSet> = by_core
        .into_values()
        .filter(|cpus| cpus.len() > 1)
        .map(|cpus| {
            let mut set = CpuSet::default();
            cpus.into_iter().for_each(|c| set.insert(c));
            set
        })
        .collect();
    groups.sort_by_key(|g| g.iter().next());
    (cores, groups)
}

#[test]
fn this_host_matches_proc_cpuinfo_and_sysinfo() {
    let inv = detect(Path::new("/sys"), Path::new("/proc")).unwrap();
    let (cores, smt_groups) = cpuinfo_topology();
    assert_eq!(inv.cores, cores, "{inv:?}");
    let mut detected = inv.smt_groups.clone();
    detected.sort_by_key(|g| g.iter().next());
    assert_eq!(detected, smt_groups, "{inv:?}");
    let info = nix::sys::sysinfo::sysinfo().unwrap();
    assert_eq!(inv.memory.get(), info.ram_total(), "{inv:?}");
    assert!(
        !Path::new("/proc/driver/nvidia/gpus").exists() || !inv.gpus.is_empty(),
        "{inv:?}"
    );
}

/// Writes `text` to `root/rel`, creating its directories.
fn put(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn a_fake_two_socket_smt_server_with_gpus() {
    let dir = tempfile::tempdir().unwrap();
    let (sys, proc) = (dir.path().join("sys"), dir.path().join("proc"));
    // 2 sockets x 4 cores x 2 threads, numbered like Intel servers (siblings n and n+8); CPU 15
    // is offline, so its sibling 7 stands alone.
    put(&sys, "devices/system/cpu/online", "0-14\n");
    put(&sys, "devices/system/cpu/offline", "15\n");
    for cpu in 0..16 {
        let (a, b) = (cpu % 8, cpu % 8 + 8);
        put(
            &sys,
            &format!("devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"),
            &format!("{a},{b}\n"),
        );
    }
    put(
        &proc,
        "meminfo",
        "MemTotal:       263856308 kB\nMemFree:        250000000 kB\nMemAvailable:   255000000 kB\n",
    );
    for (bus, model) in [
        ("0000:b1:00.0", "NVIDIA A100-SXM4-80GB"),
        ("0000:17:00.0", "NVIDIA A100-SXM4-80GB"),
        ("0000:65:00.0", "Tesla V100-PCIE-32GB"),
    ] {
        put(
            &proc,
            &format!("driver/nvidia/gpus/{bus}/information"),
            &format!(
                "Model: \t\t {model}\nIRQ:   \t\t 140\nGPU UUID: \t GPU-5a1b\n\
                 Video BIOS: \t 92.00.36.00.01\nBus Type: \t PCIe\nDMA Size: \t 47 bits\n\
                 DMA Mask: \t 0x7fffffffffff\nBus Location: \t {bus}\nDevice Minor: \t 0\n\
                 GPU Excluded:\t No\n"
            ),
        );
    }
    let inv = detect(&sys, &proc).unwrap();
    assert_eq!(inv.cores.to_string(), "0-14");
    let groups: Vec<String> = inv.smt_groups.iter().map(|g| g.to_string()).collect();
    assert_eq!(
        groups,
        ["0,8", "1,9", "2,10", "3,11", "4,12", "5,13", "6,14"]
    );
    assert_eq!(inv.memory.get(), 263_856_308 * 1024);
    let gpus: Vec<(u32, &str)> = inv
        .gpus
        .iter()
        .map(|g| (g.index, g.variant.as_str()))
        .collect();
    // Indexed in PCI bus order, as nvidia-smi numbers them by default.
    assert_eq!(gpus, [(0, "A100"), (1, "V100"), (2, "A100")]);
}
