//! Fuzz targets for every parser of untrusted bytes (issue 15, point 7), run as a short pass
//! in the test command. `LOWSCHED_FUZZ_SECS=600 cargo test --release --test fuzz_parsers --
//! --nocapture --test-threads 1` fuzzes each target for ten minutes; see the README.

#![allow(clippy::unwrap_used)]

#[path = "fuzz/harness.rs"]
mod harness;

use harness::{Budget, fuzz};
use lowsched::api::protocol::Request;
use lowsched::model::job::JobSpec;

const JSON: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"-1",
    b"1e308",
    b"\\u0000",
    b"\\u001b",
    b"\"v\":1",
    b"\"verb\":",
    b"\"job\":",
    b"\"argv\":[\"x\"]",
    b"\"name\":",
    b"\"memory\":\"",
    b"\"cores\":",
    b"\"timeout\":",
    b"\"rlimits\":{\"nofile\":",
    b"\"umask\":",
    b"18446744073709551615",
    b"\"G\"",
    b"\"1.5T\"",
    b"\"A100:2\"",
];

#[test]
fn fuzz_request_decoding() {
    fuzz("request", JSON, Budget::from_env(), |b| {
        if let Ok(req) = Request::parse(b) {
            // Whatever parses re-encodes.
            let _ = format!("{req:?}");
        }
    });
}

#[test]
fn fuzz_job_specs_and_files() {
    let dict: Vec<&[u8]> = JSON
        .iter()
        .copied()
        .chain([
            &b"\"resources\":"[..],
            b"\"cpu\":",
            b"\"mem\":",
            b"\"time\":",
            b"\"command\":",
            b"512m",
            b"1.5G",
            b"0x",
            b"::",
            b"1:",
            b"unlimited",
        ])
        .collect();
    fuzz("jobspec", &dict, Budget::from_env(), |b| {
        if let Ok(spec) = serde_json::from_slice::<JobSpec>(b) {
            let _ = spec.validate();
        }
        let text = String::from_utf8_lossy(b);
        let _ = lowsched::api::jobfile::parse(&text);
        for word in text.split(|c: char| c.is_whitespace() || c == '"').take(32) {
            let _ = word.parse::<lowsched::model::resources::Bytes>();
            let _ = word.parse::<lowsched::model::resources::CoreRange>();
            let _ = word.parse::<lowsched::model::resources::GpuRequest>();
            let _ = word.parse::<lowsched::model::limits::Rlimit>();
            let _ = word.parse::<lowsched::model::cpuset::CpuSet>();
        }
    });
}

#[test]
fn fuzz_proc_stat() {
    let dict: &[&[u8]] = &[
        b"cpu",
        b"cpu0 ",
        b"cpu1 ",
        b" 0",
        b" 18446744073709551615",
        b"\n",
        b"intr ",
    ];
    fuzz("procstat", dict, Budget::from_env(), |b| {
        use lowsched::sense::procstat;
        let _ = procstat::parse_all(b);
        for line in b.split(|&c| c == b'\n') {
            let _ = procstat::parse_line(line);
        }
        for cpu in 0..3 {
            let f = procstat::CpuLineFinder::new(cpu);
            let _ = f.find(b, true);
            let _ = f.find(b, false);
        }
    });
}

#[test]
fn fuzz_memcached_replies() {
    let dict: &[&[u8]] = &[
        b"VALUE ",
        b"END\r\n",
        b"STAT ",
        b"\r\n",
        b"ERROR\r\n",
        b"SERVER_ERROR ",
        b"CLIENT_ERROR ",
        b" 0 ",
        b" 4294967296",
        b"STORED\r\n",
        b"-1",
    ];
    fuzz("memcache", dict, Budget::from_env(), |b| {
        use lowsched::sense::memcache::proto;
        let mut rest = b;
        // Replies come back to back on one connection: parse until stuck.
        for _ in 0..64 {
            match proto::parse_reply(rest) {
                Ok(Some((_, used))) if used > 0 && used <= rest.len() => rest = &rest[used..],
                Ok(Some((_, used))) => assert!(used <= rest.len(), "consumed past the end"),
                _ => break,
            }
        }
        if let Ok(Some((_, used))) = proto::parse_stats(b) {
            assert!(used <= b.len());
        }
    });
}

#[test]
fn fuzz_config() {
    let dict: &[&[u8]] = &[
        b"[server]\n",
        b"[jobs]\n",
        b"[jobs.rlimits]\n",
        b"[service]\n",
        b"[controller]\n",
        b" = ",
        b"\"",
        b"'''",
        b"0",
        b"-1",
        b"1e999",
        b"nan",
        b"inf",
        b"[[x]]",
        b"umask = \"0",
        b"nofile = \"",
    ];
    fuzz("config", dict, Budget::from_env(), |b| {
        let text = String::from_utf8_lossy(b);
        let _ = lowsched::daemon::config::Config::parse(&text, std::path::Path::new("fuzz.toml"));
    });
}

#[test]
fn fuzz_journal_reader() {
    // tmpfs where there is one: every execution fsyncs.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let seed = lowsched::store::journal::read(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/journal/normal"),
    )
    .unwrap();
    assert_eq!(
        (seed.jobs.len(), seed.corrupt.len()),
        (2, 0),
        "{:?}",
        seed.corrupt
    );
    let dict: &[&[u8]] = &[
        b"\n",
        b"00000000 ",
        b"{\"r\":\"submitted\"",
        b"{\"r\":\"ended\"",
        b"{\"r\":\"header\"",
        b"\"id\":",
        b"\"next_id\":18446744073709551615",
    ];
    let n = std::sync::atomic::AtomicU64::new(0);
    fuzz("journal", dict, Budget::from_env(), |b| {
        use lowsched::store::journal;
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = dir.path().join(format!("d{}", i % 4));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join(journal::JOURNAL_FILE);
        std::fs::write(&path, b).unwrap();
        let replay = journal::read(&path).unwrap();
        // Opening rewrites a damaged file; what it then holds replays cleanly, to the same jobs.
        let (j, again) = journal::Journal::open(&d).unwrap();
        assert_eq!(again.jobs.len(), replay.jobs.len());
        drop(j);
        let clean = journal::read(&path).unwrap();
        assert!(clean.corrupt.is_empty(), "{:?}", clean.corrupt);
        assert_eq!(clean.jobs.len(), replay.jobs.len());
    });
}
