#![allow(clippy::unwrap_used)]
//! Loading job-list files from disk: the fixtures in tests/fixtures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lowsched::api::jobfile::{JobFileError, load};
use lowsched::model::resources::{Bytes, CoreRange};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn loads_the_seed_example_and_native_jobs_side_by_side() {
    let jobs = load(&fixture("jobs_seed.json")).unwrap();
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["123", "fft", "train", "stream"]);
    let seed = &jobs[0];
    assert_eq!(seed.argv, ["/bin/sh", "-c", "python script.py"]);
    assert_eq!(seed.cores, CoreRange::exactly(4));
    assert_eq!(seed.memory, Some(Bytes(8 << 30)));
    assert_eq!(seed.gpus.count, 1);
    assert_eq!(seed.stdout, Some("/path/to/output.log".into()));
    assert_eq!(jobs[1].cores, CoreRange { min: 1, max: 2 });
    assert_eq!(jobs[2].gpus.variant.as_deref(), Some("A100"));
    assert_eq!(jobs[2].priority, 5);
    assert_eq!(jobs[3].estimate, Some(Duration::from_secs(1)));
    assert!(!jobs[3].colocation.beside_service);
    for job in &jobs {
        job.validate().unwrap();
    }
}

#[test]
fn a_bad_file_names_the_path_job_and_field() {
    let path = fixture("jobs_bad.json");
    let err = load(&path).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with(&path.display().to_string()), "{text}");
    assert!(
        text.contains("job 1 (\"greedy\"): resources.memory:"),
        "{text}"
    );
    assert!(text.contains("\"8 gigs\""), "{text}");
}

#[test]
fn a_missing_file_names_the_path() {
    let path = fixture("no_such_file.json");
    let err = load(&path).unwrap_err();
    assert!(matches!(err, JobFileError::Read { .. }));
    assert!(err.to_string().contains("no_such_file.json"), "{err}");
}
