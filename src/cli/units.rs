//! The command line's memory sizes and time values: a value that could mean two things is
//! refused, with what would be accepted.
//!
//! argh prefixes each refusal with the flag and the value (`Error parsing option '--memory'
//! with value '4096': ...`); these functions say what is wrong and what to write instead.

use std::time::Duration;

use crate::model::resources::{Bytes, CoreRange, GpuRequest, MIN_MEMORY};

const MEMORY_FORMS: &str = "a number with a unit K, M, G or T (binary, optionally followed by \
                            B or iB), e.g. 512M, 8G, 1.5G";

/// A memory size that names its unit, at least [`MIN_MEMORY`].
///
/// A bare number is refused: Slurm reads `--mem=4096` as megabytes, the kernel as bytes; which
/// one the user meant cannot be known, so the hint offers megabytes, Slurm's reading.
pub fn memory(text: &str) -> Result<Bytes, String> {
    let t = text.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "a memory size needs a unit: did you mean {t}M? Accepted: {MEMORY_FORMS}"
        ));
    }
    let bytes: Bytes = t
        .parse()
        .map_err(|_| format!("not a memory size; accepted: {MEMORY_FORMS}"))?;
    if bytes < MIN_MEMORY {
        return Err(format!(
            "below the floor of {MIN_MEMORY} (no job runs in less); accepted: {MEMORY_FORMS}"
        ));
    }
    Ok(bytes)
}

const TIME_FORMS: &str = "seconds (90, 1.5), a number with a unit s, m, h or d (90s, 30m, 2h, \
                          1d), or Slurm's MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS";

/// A span of time: seconds, `30m`-style units, or Slurm's `[D-]HH:MM:SS` forms.
///
/// Slurm reads a bare number as minutes; lowsched's time flags have always taken seconds, and
/// the help of each says so.
pub fn duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("not a time; accepted: {TIME_FORMS}");
    let t = text.trim();
    let secs = if t.contains(':') || t.contains('-') {
        slurm_time(t).ok_or_else(bad)?
    } else {
        let (number, scale) = match t.char_indices().last() {
            Some((i, 's')) => (&t[..i], 1.0),
            Some((i, 'm')) => (&t[..i], 60.0),
            Some((i, 'h')) => (&t[..i], 3600.0),
            Some((i, 'd')) => (&t[..i], 86_400.0),
            _ => (t, 1.0),
        };
        if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(bad());
        }
        number.parse::<f64>().map_err(|_| bad())? * scale
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// `MM:SS`, `HH:MM:SS`, `D-HH`, `D-HH:MM`, `D-HH:MM:SS` as whole seconds.
fn slurm_time(t: &str) -> Option<f64> {
    let (days, rest) = match t.split_once('-') {
        Some((d, rest)) => (field(d, u64::MAX)?, rest),
        None => (0, t),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let with_days = t.contains('-');
    let (h, m, s) = match (with_days, parts.as_slice()) {
        (false, [m, s]) => (0, field(m, u64::MAX)?, field(s, 59)?),
        (false, [h, m, s]) | (true, [h, m, s]) => (field(h, 23)?, field(m, 59)?, field(s, 59)?),
        (true, [h]) => (field(h, 23)?, 0, 0),
        (true, [h, m]) => (field(h, 23)?, field(m, 59)?, 0),
        _ => return None,
    };
    let total = days
        .checked_mul(86_400)?
        .checked_add(h * 3600)?
        .checked_add(m.checked_mul(60)?)?
        .checked_add(s)?;
    Some(total as f64)
}

fn field(text: &str, max: u64) -> Option<u64> {
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&v| v <= max)
}

/// A core count `N` or `MIN:MAX`.
pub fn cores(text: &str) -> Result<CoreRange, String> {
    text.parse().map_err(|_| {
        "accepted: a core count N, or MIN:MAX with 1 <= MIN <= MAX to start on MIN and widen \
         up to MAX (e.g. 2, 1:4)"
            .to_string()
    })
}

/// A GPU request `N`, `VARIANT` or `VARIANT:N`.
pub fn gpus(text: &str) -> Result<GpuRequest, String> {
    text.parse()
        .map_err(|_| "accepted: N, VARIANT or VARIANT:N (e.g. 2, A100, A100:2)".to_string())
}

/// A priority: a whole number, higher runs first.
pub fn priority(text: &str) -> Result<i32, String> {
    text.trim().parse().map_err(|_| {
        format!(
            "accepted: a whole number from {} to {}; higher runs first",
            i32::MIN,
            i32::MAX
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_bare_memory_number_is_refused_with_a_hint() {
        let e = memory("4096").unwrap_err();
        assert!(e.contains("did you mean 4096M?"), "{e}");
        assert!(e.contains("512M"), "{e}");
        assert!(memory("8").unwrap_err().contains("8M"));
    }

    #[test]
    fn memory_below_the_floor_is_refused() {
        let e = memory("512K").unwrap_err();
        assert!(e.contains("floor of 1M"), "{e}");
        assert_eq!(memory("1M"), Ok(MIN_MEMORY));
        assert_eq!(memory("1.5G"), Ok(Bytes(3 << 29)));
        assert_eq!(memory("16GB"), Ok(Bytes(16 << 30)));
        assert!(memory("GB").unwrap_err().contains("accepted"));
    }

    #[test]
    fn times_take_seconds_units_and_slurm_forms() {
        let s = |t: &str| duration(t).map(|d| d.as_secs_f64());
        assert_eq!(s("90"), Ok(90.0));
        assert_eq!(s("2.5"), Ok(2.5));
        assert_eq!(s("90s"), Ok(90.0));
        assert_eq!(s("30m"), Ok(1800.0));
        assert_eq!(s("2h"), Ok(7200.0));
        assert_eq!(s("1d"), Ok(86_400.0));
        assert_eq!(s("05:30"), Ok(330.0));
        assert_eq!(s("90:00"), Ok(5400.0));
        assert_eq!(s("1:02:03"), Ok(3723.0));
        assert_eq!(s("2-03"), Ok(2.0 * 86_400.0 + 3.0 * 3600.0));
        assert_eq!(s("2-03:04"), Ok(2.0 * 86_400.0 + 3.0 * 3600.0 + 240.0));
        assert_eq!(s("1-00:00:01"), Ok(86_401.0));
    }

    #[test]
    fn malformed_times_say_what_is_accepted() {
        for bad in [
            "", "-1", "1:60", "1:2:3:4", "25:00:00", "x", "1y", "1-", "m", "1:-1",
        ] {
            let e = duration(bad).unwrap_err();
            assert!(e.contains("HH:MM:SS"), "{bad}: {e}");
        }
    }

    #[test]
    fn other_refusals_say_what_is_accepted() {
        assert!(cores("3:1").unwrap_err().contains("MIN:MAX"));
        assert!(gpus("A100:x").unwrap_err().contains("VARIANT:N"));
        assert!(priority("high").unwrap_err().contains("whole number"));
        assert_eq!(priority("-3"), Ok(-3));
    }

    proptest! {
        #[test]
        fn slurm_forms_round_trip(d in 0u64..400, h in 0u64..24, m in 0u64..60, s in 0u64..60) {
            let total = ((d * 24 + h) * 60 + m) * 60 + s;
            let text = format!("{d}-{h:02}:{m:02}:{s:02}");
            prop_assert_eq!(duration(&text).unwrap().as_secs(), total);
            let text = format!("{}:{s:02}", d * 1440 + h * 60 + m);
            prop_assert_eq!(duration(&text).unwrap().as_secs(), total);
        }

        #[test]
        fn every_memory_with_a_unit_at_or_over_the_floor_parses(mib in 1u64..(1 << 30)) {
            prop_assert_eq!(memory(&format!("{mib}M")), Ok(Bytes(mib << 20)));
            prop_assert!(memory(&mib.to_string()).is_err());
        }
    }
}
