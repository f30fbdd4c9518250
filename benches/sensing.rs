#![allow(clippy::unwrap_used)]
//! Micro-benchmarks of the sensing hot paths: /proc/stat parsing, the sampler's read (io_uring
//! vs pread), HDR recording, and memcached reply parsing.
//!
//! Run: `cargo bench --bench sensing`.

use std::fs::File;
use std::hint::black_box;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use criterion::{Criterion, criterion_group, criterion_main};
use lowsched::sense::latency::{EncodedHistogram, new_histogram};
use lowsched::sense::memcache::proto::parse_reply;
use lowsched::sense::procstat::{CpuLineFinder, parse_all};
use lowsched::sys::uring::DeadlineReads;

fn procstat(c: &mut Criterion) {
    let buf = std::fs::read("/proc/stat").unwrap();
    let last = parse_all(&buf).unwrap().cpus.last().unwrap().0;
    let finder = CpuLineFinder::new(last);
    c.bench_function("procstat: find and parse own cpuN line", |b| {
        b.iter(|| black_box(finder.find(black_box(&buf), false).unwrap()))
    });
    // A 64-CPU file: the line search is what grows with the machine.
    let mut big = String::from("cpu  1 2 3 4 5 6 7 8 0 0\n");
    for cpu in 0..64 {
        big.push_str(&format!(
            "cpu{cpu} 123456 789 45678 9876543 1234 0 567 89 0 0\n"
        ));
    }
    big.push_str(&"intr 1 0 0 0 0 0 0 0 0 0 0 0\n".repeat(20));
    let finder = CpuLineFinder::new(63);
    c.bench_function("procstat: find cpu63 of 64", |b| {
        b.iter(|| black_box(finder.find(black_box(big.as_bytes()), false).unwrap()))
    });
}

fn read_path(c: &mut Criterion) {
    let f = File::open("/proc/stat").unwrap();
    let mut ring = DeadlineReads::new(1, 8192).unwrap();
    c.bench_function("sampler read: io_uring read", |b| {
        b.iter(|| {
            ring.run(None, &[f.as_fd()]).unwrap();
            black_box(ring.result(0).unwrap().len())
        })
    });
    // A whole period's submission with its deadline already passed: the timeout's own cost
    // (arming and firing an hrtimer) is what a sleep would cost too.
    c.bench_function("sampler period: io_uring timeout(due) -> read", |b| {
        b.iter(|| {
            ring.run(Some(0), &[f.as_fd()]).unwrap();
            black_box(ring.result(0).unwrap().len())
        })
    });
    let mut buf = vec![0u8; 8192];
    c.bench_function("sampler read: pread", |b| {
        b.iter(|| black_box(f.read_at(&mut buf, 0).unwrap()))
    });
}

fn histogram(c: &mut Criterion) {
    let mut h = new_histogram();
    let mut v = 1u64;
    c.bench_function("hdr record (µs, 3 digits)", |b| {
        b.iter(|| {
            v = (v * 1103515245 + 12345) % 100_000;
            h.saturating_record(black_box(v));
        })
    });
    let mut h = new_histogram();
    for i in 0..1000u64 {
        h.record(50 + i % 700).unwrap();
    }
    c.bench_function("hdr encode a 1 s window (V2 deflate + base64)", |b| {
        b.iter(|| black_box(EncodedHistogram::encode(&h).unwrap()))
    });
}

fn memcache(c: &mut Criterion) {
    let hit = b"VALUE lowsched:probe 0 5\r\nhello\r\nEND\r\n";
    c.bench_function("memcache: parse a get hit", |b| {
        b.iter(|| black_box(parse_reply(black_box(hit)).unwrap()))
    });
}

criterion_group!(benches, procstat, read_path, histogram, memcache);
criterion_main!(benches);
