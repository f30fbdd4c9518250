//! Config tests: defaults, the shipped example, bad values named with their key.

use super::*;

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(
        Config::parse("", Path::new("x")).unwrap(),
        Config::default()
    );
}

#[test]
fn the_shipped_example_lists_every_key_with_its_default() {
    let text = include_str!("../../../systemd/lowsched.toml");
    // Uncommenting every `# key = value` line gives a config equal to the defaults.
    let uncommented: String = text
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|r| r.contains(" = ") || r.starts_with('['))
                .unwrap_or(l)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg = Config::parse(&uncommented, Path::new("lowsched.toml")).unwrap();
    let mut want = Config::default();
    // The example names an existing-cgroup and a pid file for the service, as illustrations.
    want.service.cgroup = cfg.service.cgroup.clone();
    want.service.pid_file = cfg.service.pid_file.clone();
    want.node = cfg.node.clone();
    assert_eq!(cfg, want);
    assert!(cfg.service.cgroup.is_some() && cfg.node.cores.is_some());
    // And every key of the defaults appears in the example.
    let defaults = toml::to_string(&Config::default()).unwrap();
    for line in defaults.lines().filter(|l| l.contains(" = ")) {
        let key = line.split(" = ").next().unwrap();
        assert!(
            uncommented.contains(&format!("{key} = ")),
            "example lacks {key}"
        );
    }
}

#[test]
fn the_slurm_node_section_users_copy_parses() {
    let text = include_str!("../../../cgroups/slurm/lowsched-slurm.toml");
    let cfg = Config::parse(text, Path::new("lowsched-slurm.toml")).unwrap();
    assert_eq!(cfg.slurm.enabled, crate::node::service::Enabled::Auto);
    assert!(Config::parse("[slurm]\ndrain_hold_s = -3", Path::new("x")).is_err());
}

#[test]
fn errors_name_the_file_and_the_key() {
    let e = Config::parse("polcy = 1", Path::new("/etc/x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/etc/x.toml") && e.contains("polcy"), "{e}");
    let e = Config::parse("[policy]\nname = \"lifo\"", Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("lifo") && e.contains("fifo"), "{e}");
    let e = Config::parse("[slo]\np95_us = \"fast\"", Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("p95_us"), "{e}");
    let e = Config::parse("[service]\nmin_cores = 0", Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("min_cores"), "{e}");
    let e = Config::parse("[node]\ncores = \"0-x\"", Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("node.cores"), "{e}");
}

#[test]
fn fairness_keys_parse_and_the_old_per_user_name_still_reads() {
    let text =
        "[jobs]\nmax_queued_per_user = 7\n[policy]\nmax_user_priority = 5\nfair_share = false";
    let cfg = Config::parse(text, Path::new("x")).unwrap();
    assert_eq!(cfg.jobs.max_jobs_per_user, 7);
    assert_eq!(cfg.submit_limits().max_user_priority, 5);
    assert!(!cfg.policy.policy_config().unwrap().fair_share);
    let e = Config::parse("[policy]\nfair_share_half_life_s = -1", Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fair_share_half_life_s"), "{e}");
}
