//! `/proc/stat` parsing: the per-CPU time counters (in `USER_HZ` ticks), found with memchr, and
//! the per-period delta with counter anomalies (regressions, wraps, resets) absorbed.

use memchr::memmem;

/// Name of the file under the proc root.
pub const PROC_STAT: &str = "stat";

/// One `cpuN` line: cumulative ticks per state. Fields absent on old kernels read as 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
    pub guest: u64,
    pub guest_nice: u64,
}

impl CpuTimes {
    fn fields(&self) -> [u64; 8] {
        // guest and guest_nice are already included in user and nice.
        [
            self.user,
            self.nice,
            self.system,
            self.idle,
            self.iowait,
            self.irq,
            self.softirq,
            self.steal,
        ]
    }

    /// Ticks spent running something (everything but idle and iowait).
    pub fn busy(&self) -> u64 {
        let f = self.fields();
        f[0] + f[1] + f[2] + f[5] + f[6] + f[7]
    }

    pub fn total(&self) -> u64 {
        self.fields().iter().sum()
    }
}

/// Why a `/proc/stat` buffer could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcStatError {
    #[error("/proc/stat line for {} is malformed: {what}", crate::model::text::quoted(.line))]
    Malformed { line: String, what: &'static str },
    #[error("/proc/stat read was cut off inside the {} line (buffer of {len} bytes)", crate::model::text::quoted(.line))]
    Truncated { line: String, len: usize },
}

/// Finds one CPU's line in a `/proc/stat` buffer. Built once per sampler.
#[derive(Debug, Clone)]
pub struct CpuLineFinder {
    cpu: usize,
    needle: memmem::Finder<'static>,
}

impl CpuLineFinder {
    pub fn new(cpu: usize) -> Self {
        Self {
            cpu,
            needle: memmem::Finder::new(format!("\ncpu{cpu} ").as_bytes()).into_owned(),
        }
    }

    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// The CPU's counters, or `None` when its line is absent (the CPU is offline). `buf` is what
    /// one read returned; `full` says the read filled the buffer (so more may follow).
    pub fn find(&self, buf: &[u8], full: bool) -> Result<Option<CpuTimes>, ProcStatError> {
        let Some(at) = self.needle.find(buf) else {
            if full {
                // The line may lie beyond what was read: ask for a bigger buffer.
                return Err(ProcStatError::Truncated {
                    line: format!("cpu{}", self.cpu),
                    len: buf.len(),
                });
            }
            return Ok(None);
        };
        let start = at + 1;
        let rest = &buf[start..];
        let Some(end) = memchr::memchr(b'\n', rest) else {
            return Err(ProcStatError::Truncated {
                line: format!("cpu{}", self.cpu),
                len: buf.len(),
            });
        };
        parse_line(&rest[..end]).map(|(_, t)| Some(t))
    }
}

/// Parses one `cpu…` line into its label (`None` for the aggregate `cpu` line) and counters.
pub fn parse_line(line: &[u8]) -> Result<(Option<usize>, CpuTimes), ProcStatError> {
    let malformed = |what| ProcStatError::Malformed {
        line: String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned(),
        what,
    };
    let Some(label_end) = memchr::memchr(b' ', line) else {
        return Err(malformed("no counters after the label"));
    };
    let label = &line[..label_end];
    let Some(id) = label.strip_prefix(b"cpu") else {
        return Err(malformed("not a cpu line"));
    };
    let cpu = if id.is_empty() {
        None
    } else {
        Some(parse_u64(id).ok_or_else(|| malformed("bad CPU number"))? as usize)
    };
    let mut vals = [0u64; 10];
    let mut n = 0;
    for field in line[label_end..].split(|&b| b == b' ') {
        if field.is_empty() {
            continue;
        }
        if n == vals.len() {
            break; // a future kernel's extra fields
        }
        vals[n] = parse_u64(field).ok_or_else(|| malformed("a counter is not a number"))?;
        n += 1;
    }
    if n < 4 {
        return Err(malformed("fewer than 4 counters"));
    }
    let [
        user,
        nice,
        system,
        idle,
        iowait,
        irq,
        softirq,
        steal,
        guest,
        guest_nice,
    ] = vals;
    Ok((
        cpu,
        CpuTimes {
            user,
            nice,
            system,
            idle,
            iowait,
            irq,
            softirq,
            steal,
            guest,
            guest_nice,
        },
    ))
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Every CPU line of a whole `/proc/stat`: the aggregate and the online CPUs, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcStat {
    pub total: CpuTimes,
    pub cpus: Vec<(usize, CpuTimes)>,
}

pub fn parse_all(buf: &[u8]) -> Result<ProcStat, ProcStatError> {
    let mut out = ProcStat::default();
    for line in buf.split(|&b| b == b'\n') {
        if !line.starts_with(b"cpu") {
            if !out.cpus.is_empty() || line.is_empty() {
                break; // the cpu lines come first
            }
            continue;
        }
        match parse_line(line)? {
            (None, t) => out.total = t,
            (Some(cpu), t) => out.cpus.push((cpu, t)),
        }
    }
    Ok(out)
}

/// One period's change of a CPU's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuDelta {
    pub busy: u64,
    pub total: u64,
    /// Counters that went backwards or jumped implausibly; their change counted as 0.
    pub anomalies: u32,
}

impl CpuDelta {
    /// Busy fraction in [0, 1]; `None` when no tick elapsed (the counters advance in 10 ms ticks).
    pub fn utilization(&self) -> Option<f64> {
        (self.total > 0).then(|| self.busy as f64 / self.total as f64)
    }
}

/// The change from `prev` to `cur` when at most `max_ticks` can have elapsed.
///
/// Problem: counters can go backwards (iowait does on NO_HZ kernels; a hot-plugged CPU starts
/// again from 0) and, in principle, wrap. Approach: take each field's change modulo 2^64. A true
/// wrap gives a small, plausible change, which is kept; a regression gives a huge one — more than
/// the wall time allows — which counts as an anomaly and contributes 0, so the new value simply
/// becomes the baseline.
pub fn delta(prev: &CpuTimes, cur: &CpuTimes, max_ticks: u64) -> CpuDelta {
    let (p, c) = (prev.fields(), cur.fields());
    let mut d = [0u64; 8];
    let mut anomalies = 0;
    for i in 0..8 {
        let change = c[i].wrapping_sub(p[i]);
        if change > max_ticks {
            anomalies += 1;
        } else {
            d[i] = change;
        }
    }
    let busy = d[0] + d[1] + d[2] + d[5] + d[6] + d[7];
    CpuDelta {
        busy,
        total: busy + d[3] + d[4],
        anomalies,
    }
}

/// The most ticks a CPU's counters can advance in `elapsed_ns`, with room for rounding.
pub fn max_ticks(elapsed_ns: u64, user_hz: u64) -> u64 {
    (elapsed_ns as u128 * user_hz as u128 * 5 / 4 / 1_000_000_000) as u64 + 2
}

#[cfg(test)]
mod tests;
