//! A single-writer seqlock over atomic words: the writer publishes a small snapshot without a
//! lock, readers on other threads get a consistent copy or retry.
//!
//! Problem: a reader must never see half of one update and half of the next (a utilization with
//! the previous period's timestamp), and the writer — a pinned sampler — must never block.
//! Approach: the classic seqlock. The writer makes the sequence odd, stores the words, makes it
//! even again; a reader retries while the sequence is odd or changed under it. The payload is
//! itself atomic words (relaxed), so there is no data race in Rust's memory model, and fences
//! order the payload against the sequence.

use std::sync::atomic::{AtomicU64, Ordering, fence};

/// A value that packs into `N` machine words.
pub trait Packed<const N: usize>: Sized {
    fn pack(&self) -> [u64; N];
    fn unpack(words: [u64; N]) -> Self;
}

/// The cell. Exactly one thread may call [`SeqCell::write`]; any number may read.
#[derive(Debug)]
pub struct SeqCell<const N: usize> {
    seq: AtomicU64,
    words: [AtomicU64; N],
}

impl<const N: usize> Default for SeqCell<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> SeqCell<N> {
    pub fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Publishes `words`. Wait-free. Only one thread may write a given cell.
    pub fn write(&self, words: [u64; N]) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (slot, w) in self.words.iter().zip(words) {
            slot.store(w, Ordering::Relaxed);
        }
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// A consistent copy of the last published words (all zero before the first write).
    pub fn read(&self) -> [u64; N] {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let out: [u64; N] = std::array::from_fn(|i| self.words[i].load(Ordering::Relaxed));
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return out;
            }
        }
    }

    /// How many writes have been published (the sequence / 2).
    pub fn version(&self) -> u64 {
        self.seq.load(Ordering::Acquire) / 2
    }

    pub fn publish<T: Packed<N>>(&self, value: &T) {
        self.write(value.pack());
    }

    pub fn load<T: Packed<N>>(&self) -> T {
        T::unpack(self.read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn readers_never_see_a_torn_snapshot() {
        let cell = Arc::new(SeqCell::<4>::new());
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (cell, stop) = (cell.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    cell.write([i, i * 2, i * 3, !i]);
                }
            })
        };
        let mut last = 0;
        for _ in 0..200_000 {
            let [a, b, c, d] = cell.read();
            if a != 0 {
                assert_eq!((b, c, d), (a * 2, a * 3, !a));
                assert!(a >= last);
                last = a;
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(cell.version() > 0);
    }
}
