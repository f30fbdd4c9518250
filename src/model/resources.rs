//! What a job asks of the node: cores (a min..max range), memory, GPUs, and their text forms.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a resource request could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error(
        "bad memory size {}: expected bytes or a number with a unit k, m, g or t \
         (optionally followed by b or ib), e.g. 512m, 8g, 16GB, 1.5G",
        super::text::quoted(.text)
    )]
    Memory { text: String },
    #[error("memory size {} is too large", super::text::quoted(.text))]
    MemoryOverflow { text: String },
    #[error("bad core count {}: expected N or MIN:MAX with 1 <= MIN <= MAX", super::text::quoted(.text))]
    Cores { text: String },
    #[error("bad GPU request {}: expected N, VARIANT or VARIANT:N (e.g. 2, A100, A100:2)", super::text::quoted(.text))]
    Gpus { text: String },
}

/// The smallest memory limit a job may ask for: below it no program starts, so a smaller
/// number is a mistake (a unit left out), never a real limit.
pub const MIN_MEMORY: Bytes = Bytes(1 << 20);

/// A memory size in bytes. Text units are binary (`1k` = 1024), as Slurm, Docker and the kernel's
/// `memory.max` use them; `b`/`ib` suffixes and any letter case are accepted.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

impl Bytes {
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for Bytes {
    type Err = ResourceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ResourceError::Memory {
            text: text.to_string(),
        };
        let s = text.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(bad()),
        };
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return Err(bad());
        }
        let scale = 1u64 << shift;
        let bytes = match number.split_once('.') {
            None => {
                let whole: u64 = number.parse().map_err(|_| bad())?;
                whole.checked_mul(scale)
            }
            Some((whole, frac)) => {
                // Exact decimal arithmetic: 1.5G is 1610612736 bytes, never 1610612735.99.
                if shift == 0 || frac.len() > 9 {
                    return Err(bad());
                }
                let whole: u64 = whole.parse().map_err(|_| bad())?;
                let digits: u64 = frac.parse().map_err(|_| bad())?;
                let denom = 10u64.pow(frac.len() as u32);
                let frac_bytes = u128::from(digits) * u128::from(scale) / u128::from(denom);
                whole
                    .checked_mul(scale)
                    .and_then(|w| w.checked_add(u64::try_from(frac_bytes).ok()?))
            }
        };
        bytes
            .map(Bytes)
            .ok_or_else(|| ResourceError::MemoryOverflow {
                text: text.to_string(),
            })
    }
}

/// Prints the largest binary unit that divides exactly: `8G`, `1536M`, `1000`.
impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 4] = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            let scale = 1u64 << shift;
            if self.0 >= scale && self.0 % scale == 0 {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({self})")
    }
}

/// JSON: a string with a unit (`"8G"`) or a plain number of bytes both load; it saves as a string.
impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("memory must be a number of bytes or a string like \"8G\"")
        })? {
            Raw::Number(n) => Ok(Bytes(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// How many cores a job wants: it starts once `min` are free and may be widened up to `max`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreRange {
    pub min: u32,
    pub max: u32,
}

impl CoreRange {
    pub const fn exactly(n: u32) -> Self {
        Self { min: n, max: n }
    }

    pub fn is_valid(&self) -> bool {
        self.min >= 1 && self.min <= self.max
    }
}

impl Default for CoreRange {
    fn default() -> Self {
        Self::exactly(1)
    }
}

/// `N` or `MIN:MAX`.
impl FromStr for CoreRange {
    type Err = ResourceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ResourceError::Cores {
            text: text.to_string(),
        };
        let parse = |s: &str| s.trim().parse::<u32>().map_err(|_| bad());
        let range = match text.split_once(':') {
            Some((lo, hi)) => Self {
                min: parse(lo)?,
                max: parse(hi)?,
            },
            None => Self::exactly(parse(text)?),
        };
        if range.is_valid() {
            Ok(range)
        } else {
            Err(bad())
        }
    }
}

impl fmt::Display for CoreRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}:{}", self.min, self.max)
        }
    }
}

/// GPUs a job needs: a count and, optionally, the model it must run on (`A100`).
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuRequest {
    #[serde(default)]
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl GpuRequest {
    pub fn is_none(&self) -> bool {
        self.count == 0
    }
}

/// `N`, `VARIANT` (one of it) or `VARIANT:N`.
impl FromStr for GpuRequest {
    type Err = ResourceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ResourceError::Gpus {
            text: text.to_string(),
        };
        let t = text.trim();
        if let Ok(count) = t.parse::<u32>() {
            return Ok(Self {
                count,
                variant: None,
            });
        }
        let (variant, count) = match t.split_once(':') {
            Some((v, n)) => (v.trim(), n.trim().parse::<u32>().map_err(|_| bad())?),
            None => (t, 1),
        };
        let valid_name = !variant.is_empty()
            && variant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid_name || count == 0 {
            return Err(bad());
        }
        Ok(Self {
            count,
            variant: Some(variant.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> u64 {
        s.parse::<Bytes>().unwrap().get()
    }

    #[test]
    fn memory_sizes_in_every_documented_form() {
        assert_eq!(bytes("512m"), 512 << 20);
        assert_eq!(bytes("8g"), 8 << 30);
        assert_eq!(bytes("16GB"), 16 << 30);
        assert_eq!(bytes("1.5G"), 3 << 29);
        assert_eq!(bytes("4096"), 4096);
        assert_eq!(bytes("2GiB"), 2 << 30);
        assert_eq!(bytes(" 1t "), 1 << 40);
        assert_eq!(bytes("0.5k"), 512);
    }

    #[test]
    fn bad_memory_names_the_text() {
        for bad in [
            "", "g", "12x", "-1g", "1.g", ".5g", "1.5", "1..5g", "8 gigs", "1e9",
        ] {
            let err = bad.parse::<Bytes>().unwrap_err();
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
        assert!(matches!(
            "99999999999t".parse::<Bytes>(),
            Err(ResourceError::MemoryOverflow { .. })
        ));
    }

    #[test]
    fn memory_round_trips_through_json_and_display() {
        for s in ["8G", "1536M", "1000", "3K"] {
            let b: Bytes = s.parse().unwrap();
            assert_eq!(b.to_string(), s);
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(serde_json::from_str::<Bytes>(&json).unwrap(), b);
        }
        assert_eq!(serde_json::from_str::<Bytes>("1024").unwrap(), Bytes(1024));
        assert!(serde_json::from_str::<Bytes>("\"lots\"").is_err());
        assert!(serde_json::from_str::<Bytes>("-5").is_err());
    }

    #[test]
    fn core_ranges() {
        assert_eq!("4".parse::<CoreRange>().unwrap(), CoreRange::exactly(4));
        assert_eq!(
            "1:3".parse::<CoreRange>().unwrap(),
            CoreRange { min: 1, max: 3 }
        );
        for bad in ["0", "3:1", "x", "-1", "1:", ":2", "0:0"] {
            assert!(bad.parse::<CoreRange>().is_err(), "{bad}");
        }
        assert_eq!(CoreRange { min: 1, max: 3 }.to_string(), "1:3");
    }

    #[test]
    fn gpu_requests() {
        assert_eq!(
            "2".parse::<GpuRequest>().unwrap(),
            GpuRequest {
                count: 2,
                variant: None
            }
        );
        let a100 = GpuRequest {
            count: 1,
            variant: Some("A100".into()),
        };
        assert_eq!("A100".parse::<GpuRequest>().unwrap(), a100);
        assert_eq!("A100:3".parse::<GpuRequest>().unwrap().count, 3);
        for bad in ["A100:0", "A100:x", ":2", "a b"] {
            assert!(bad.parse::<GpuRequest>().is_err(), "{bad}");
        }
    }
}
