//! A small mutational byte fuzzer that runs on the stable toolchain inside `cargo test`.
//!
//! The problem: parsers of untrusted bytes (socket requests, job files, the journal, /proc, a
//! memcached that may not be memcached) must never panic, and the test command must exercise
//! them on every run without a nightly toolchain. The approach: replay each target's seed
//! corpus, then mutate random seeds (bit flips, interesting bytes, inserts, deletes, copies,
//! splices, dictionary tokens) for a fixed number of executions or a time budget, catching
//! panics. A crashing input is saved under `target/fuzz-crashes/` and fails the test; copy it
//! into the corpus once fixed. Not coverage-guided (cargo-fuzz would be), so long runs matter.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long or how many executions one target gets.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub execs: u64,
    pub time: Option<Duration>,
}

impl Budget {
    /// `LOWSCHED_FUZZ_SECS=N` fuzzes each target for N seconds; otherwise a short pass of
    /// `LOWSCHED_FUZZ_EXECS` (default 3000) executions.
    pub fn from_env() -> Self {
        let secs = std::env::var("LOWSCHED_FUZZ_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        let execs = std::env::var("LOWSCHED_FUZZ_EXECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000);
        match secs {
            Some(s) => Self {
                execs: u64::MAX,
                time: Some(Duration::from_secs(s)),
            },
            None => Self { execs, time: None },
        }
    }
}

/// xorshift64*: deterministic per seed, so a run can be repeated with LOWSCHED_FUZZ_SEED.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'\n', b'\r', b' ', b'"', b'\\', b'{', b'}',
];

/// Applies 1-8 random mutations to `data`.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, corpus: &[Vec<u8>], dict: &[&[u8]]) {
    for _ in 0..=rng.below(8) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                data.drain(i..i + n);
            }
            4 if len > 0 => {
                // Copy a slice of itself elsewhere (repeats fields, nests brackets).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let piece = data[i..i + n].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, piece);
            }
            5 if !corpus.is_empty() => {
                // Splice: our head, another seed's tail.
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            6 | 7 if !dict.is_empty() => {
                let tok = dict[rng.below(dict.len())];
                let i = rng.below(len + 1);
                data.splice(i..i, tok.iter().copied());
            }
            8 if len > 1 => {
                let n = rng.below(len);
                data.truncate(n);
            }
            _ => data.push(rng.next() as u8),
        }
    }
    data.truncate(64 * 1024);
}

/// The seed files of `tests/fuzz/corpus/<name>/`.
pub fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "corpus {} is empty", dir.display());
    seeds
}

/// Runs `target` on every seed, then on mutants within `budget`. Panics (failing the test)
/// with the saved input's path if the target panicked. Returns the executions made.
pub fn fuzz(name: &str, dict: &[&[u8]], budget: Budget, target: impl Fn(&[u8])) -> u64 {
    let seeds = corpus(name);
    let seed = std::env::var("LOWSCHED_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_0000 ^ name.len() as u64);
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut execs = 0u64;
    let run = |input: &[u8], execs: &mut u64| {
        *execs += 1;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(input)));
        if r.is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{name}-{:016x}", fnv(input)));
            std::fs::write(&path, input).unwrap();
            panic!(
                "fuzz target {name} panicked; input saved to {}",
                path.display()
            );
        }
    };
    for s in &seeds {
        run(s, &mut execs);
    }
    let out_of_time = |t: Instant| budget.time.is_some_and(|b| t.elapsed() >= b);
    while execs < budget.execs && !out_of_time(started) {
        let mut data = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut data, &seeds, dict);
        run(&data, &mut execs);
    }
    println!(
        "fuzz {name}: {execs} executions in {:.1} s, {} seeds, no crash",
        started.elapsed().as_secs_f64(),
        seeds.len()
    );
    execs
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
