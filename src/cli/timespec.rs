//! Points in time on the command line (`--since`, `--until`): a span ago (`90s`, `10m`, `2h`,
//! `1d`), Unix seconds (`1765068000`), or an ISO 8601 UTC time (`2026-12-07T00:40:00Z`, with or
//! without fractional seconds, `Z` or `+00:00`).

/// Unix seconds of `spec`, relative spans counted back from `now_unix_s`.
pub fn parse_time(spec: &str, now_unix_s: f64) -> Result<f64, String> {
    let s = spec.trim();
    let bad = || {
        format!(
            "time {}: expected a span ago (90s, 10m, 2h, 1d), Unix seconds, or \
             YYYY-MM-DDTHH:MM:SS[.fff](Z|+00:00)",
            crate::model::text::quoted(spec)
        )
    };
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c)) {
        let n: f64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
        let mult = match unit {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            _ => 86_400.0,
        };
        if !n.is_finite() || n < 0.0 {
            return Err(bad());
        }
        return Ok(now_unix_s - n * mult);
    }
    if let Ok(v) = s.parse::<f64>() {
        return if v.is_finite() && v >= 0.0 {
            Ok(v)
        } else {
            Err(bad())
        };
    }
    parse_iso_utc(s).ok_or_else(bad)
}

fn parse_iso_utc(s: &str) -> Option<f64> {
    let body = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = body.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let t: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    if !(1..=12).contains(&d[1]) || !(1..=31).contains(&d[2]) || t[0] > 23 || t[1] > 59 || t[2] > 60
    {
        return None;
    }
    let frac: f64 = if frac.is_empty() {
        0.0
    } else {
        format!("0.{frac}").parse().ok()?
    };
    let days = days_from_civil(d[0], d[1], d[2]);
    Some((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_ago_unix_and_iso() {
        let now = 1_800_000_000.0;
        assert_eq!(parse_time("90s", now), Ok(now - 90.0));
        assert_eq!(parse_time("10m", now), Ok(now - 600.0));
        assert_eq!(parse_time("2h", now), Ok(now - 7200.0));
        assert_eq!(parse_time("1d", now), Ok(now - 86_400.0));
        assert_eq!(parse_time("1765068000", now), Ok(1_765_068_000.0));
        assert_eq!(parse_time("1970-01-01T00:00:00Z", now), Ok(0.0));
        assert_eq!(
            parse_time("2026-12-07T00:40:00.5+00:00", now),
            Ok(1_796_604_000.5)
        );
        assert_eq!(parse_time("2000-03-01T00:00:00Z", now), Ok(951_868_800.0));
    }

    #[test]
    fn nonsense_is_refused_naming_the_input() {
        for bad in [
            "",
            "yesterday",
            "-5m",
            "2026-13-01T00:00:00Z",
            "2026-12-07 00:40:00",
        ] {
            let e = parse_time(bad, 0.0).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
