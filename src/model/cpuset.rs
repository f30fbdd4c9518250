//! A set of CPU ids, in the kernel's list format (`0-3,8,10-11`) on the wire and in cgroupfs.
//!
//! `CpuSet` is a fixed-size bitmap so it is `Copy`, allocation-free and cheap to compare: the
//! policy builds and tears down many of these per decision. In JSON it is a list of core ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Highest CPU count a set can hold. Linux distribution kernels build with `NR_CPUS` up to 8192,
/// but no host this daemon targets has more than 1024 logical CPUs.
pub const MAX_CPUS: usize = 1024;
const WORDS: usize = MAX_CPUS / 64;

/// Why a CPU list could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuSetError {
    #[error("bad CPU list {}: {what}", super::text::quoted(.text))]
    Parse { text: String, what: &'static str },
    #[error("CPU {cpu} is beyond the supported maximum of {max}", max = MAX_CPUS - 1)]
    TooLarge { cpu: usize },
}

/// A set of logical CPU ids.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CpuSet {
    words: [u64; WORDS],
}

impl CpuSet {
    /// The empty set.
    pub const fn new() -> Self {
        Self { words: [0; WORDS] }
    }

    /// `first..first+count`, e.g. `range(0, 2)` is `0-1`.
    pub fn range(first: usize, count: usize) -> Result<Self, CpuSetError> {
        let mut set = Self::new();
        for cpu in first..first + count {
            set.try_insert(cpu)?;
        }
        Ok(set)
    }

    /// Adds `cpu`; errors only when it exceeds [`MAX_CPUS`].
    pub fn try_insert(&mut self, cpu: usize) -> Result<(), CpuSetError> {
        if cpu >= MAX_CPUS {
            return Err(CpuSetError::TooLarge { cpu });
        }
        self.words[cpu / 64] |= 1 << (cpu % 64);
        Ok(())
    }

    /// Adds `cpu`. Ids at or beyond [`MAX_CPUS`] are ignored: callers hold ids that came out of
    /// another `CpuSet` or a bounded inventory.
    pub fn insert(&mut self, cpu: usize) {
        let _ = self.try_insert(cpu);
    }

    pub fn remove(&mut self, cpu: usize) {
        if cpu < MAX_CPUS {
            self.words[cpu / 64] &= !(1 << (cpu % 64));
        }
    }

    pub fn contains(&self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.words[cpu / 64] & (1 << (cpu % 64)) != 0
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    pub fn union(&self, other: &Self) -> Self {
        self.zip(other, |a, b| a | b)
    }

    pub fn intersection(&self, other: &Self) -> Self {
        self.zip(other, |a, b| a & b)
    }

    /// Members of `self` not in `other`.
    pub fn difference(&self, other: &Self) -> Self {
        self.zip(other, |a, b| a & !b)
    }

    pub fn is_subset(&self, other: &Self) -> bool {
        self.difference(other).is_empty()
    }

    pub fn is_disjoint(&self, other: &Self) -> bool {
        self.intersection(other).is_empty()
    }

    /// The lowest id, if any.
    pub fn first(&self) -> Option<usize> {
        self.iter().next()
    }

    /// The `n` lowest members (all of them if there are fewer).
    pub fn lowest(&self, n: usize) -> Self {
        let mut out = Self::new();
        for cpu in self.iter().take(n) {
            out.insert(cpu);
        }
        out
    }

    /// The `n` highest members (all of them if there are fewer).
    pub fn highest(&self, n: usize) -> Self {
        let skip = self.len().saturating_sub(n);
        let mut out = Self::new();
        for cpu in self.iter().skip(skip) {
            out.insert(cpu);
        }
        out
    }

    /// Members in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * 64 + bit)
            })
        })
    }

    /// Members as a vector, ascending.
    pub fn to_vec(&self) -> Vec<usize> {
        self.iter().collect()
    }

    fn zip(&self, other: &Self, f: impl Fn(u64, u64) -> u64) -> Self {
        let mut out = Self::new();
        for (i, w) in out.words.iter_mut().enumerate() {
            *w = f(self.words[i], other.words[i]);
        }
        out
    }
}

impl FromIterator<usize> for CpuSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        let mut set = Self::new();
        for cpu in iter {
            set.insert(cpu);
        }
        set
    }
}

/// Parses the kernel's list format: comma-separated ids and `a-b` ranges, surrounding whitespace
/// and a trailing newline allowed, the empty string is the empty set.
impl FromStr for CpuSet {
    type Err = CpuSetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |what| CpuSetError::Parse {
            text: text.to_string(),
            what,
        };
        let mut set = Self::new();
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(set);
        }
        for part in trimmed.split(',') {
            let part = part.trim();
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (part, part),
            };
            let lo: usize = lo.parse().map_err(|_| bad("expected a CPU number"))?;
            let hi: usize = hi.parse().map_err(|_| bad("expected a CPU number"))?;
            if lo > hi {
                return Err(bad("range end is below its start"));
            }
            if hi >= MAX_CPUS {
                return Err(CpuSetError::TooLarge { cpu: hi });
            }
            for cpu in lo..=hi {
                set.insert(cpu);
            }
        }
        Ok(set)
    }
}

/// Formats in the kernel's list format with ranges collapsed: `0-3,8`.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.iter().peekable();
        while let Some(lo) = iter.next() {
            let mut hi = lo;
            while iter.peek() == Some(&(hi + 1)) {
                hi += 1;
                iter.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

impl Serialize for CpuSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for CpuSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ids = Vec::<usize>::deserialize(d)?;
        let mut set = Self::new();
        for cpu in ids {
            set.try_insert(cpu).map_err(serde::de::Error::custom)?;
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_list_format() {
        let set: CpuSet = "0-3,8,10-11\n".parse().unwrap();
        assert_eq!(set.to_vec(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(set.to_string(), "0-3,8,10-11");
        assert!("".parse::<CpuSet>().unwrap().is_empty());
        assert_eq!("5".parse::<CpuSet>().unwrap().to_string(), "5");
    }

    #[test]
    fn rejects_bad_lists_naming_the_text() {
        let err = "0-x".parse::<CpuSet>().unwrap_err();
        assert!(err.to_string().contains("\"0-x\""), "{err}");
        assert!("3-1".parse::<CpuSet>().is_err());
        assert!(",".parse::<CpuSet>().is_err());
        assert_eq!(
            "0-5000".parse::<CpuSet>().unwrap_err(),
            CpuSetError::TooLarge { cpu: 5000 }
        );
    }

    #[test]
    fn set_algebra() {
        let a: CpuSet = "0-3".parse().unwrap();
        let b: CpuSet = "2-5".parse().unwrap();
        assert_eq!(a.intersection(&b).to_string(), "2-3");
        assert_eq!(a.union(&b).to_string(), "0-5");
        assert_eq!(a.difference(&b).to_string(), "0-1");
        assert!(a.lowest(2).is_subset(&a));
        assert_eq!(a.highest(1).to_string(), "3");
        assert_eq!(a.lowest(9), a);
        assert!(!a.is_disjoint(&b));
        let high: CpuSet = [63, 64, 1023].into_iter().collect();
        assert_eq!(high.to_string(), "63-64,1023");
        assert_eq!(high.len(), 3);
    }

    #[test]
    fn json_is_a_list_of_ids() {
        let set: CpuSet = "1,3".parse().unwrap();
        assert_eq!(serde_json::to_string(&set).unwrap(), "[1,3]");
        let back: CpuSet = serde_json::from_str("[3,1]").unwrap();
        assert_eq!(back, set);
        assert!(serde_json::from_str::<CpuSet>("[4096]").is_err());
    }
}
