#![allow(clippy::unwrap_used)]
//! Inventory detection on this machine's real /sys and /proc.

use std::path::Path;

use lowsched::model::inventory::detect;

#[test]
fn detects_this_host() {
    let inv = detect(Path::new("/sys"), Path::new("/proc")).unwrap();
    // sysconf's count of online CPUs reads the same kernel file; they must agree.
    let online = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .unwrap()
        .unwrap();
    assert_eq!(inv.cores.len() as i64, online, "{inv:?}");
    assert!(inv.memory.get() > 256 << 20, "{inv:?}");
    for group in &inv.smt_groups {
        assert!(group.len() > 1 && group.is_subset(&inv.cores), "{inv:?}");
    }
    eprintln!(
        "cores [{}], memory {}, smt groups {}, GPUs {}",
        inv.cores,
        inv.memory,
        inv.smt_groups.len(),
        inv.gpus.len()
    );
}
