//! HdrHistogram interval logs (format 1.3, V2-compressed histograms, values in µs): the form
//! standard HdrHistogram tools read, written for the probe's windows and the load generator's.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;

/// Why an interval log could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the interval log: {0}")]
pub struct HlogError(pub String);

/// Writes an HdrHistogram interval log: header (format version, StartTime and BaseTime at
/// `start_unix_s`, legend), then one V2-compressed histogram per interval, timestamps relative
/// to the start. Values are in microseconds.
pub fn write_interval_log<'h>(
    out: &mut impl Write,
    start_unix_s: f64,
    comment: &str,
    intervals: impl Iterator<Item = (f64, f64, &'h Histogram<u64>)>,
) -> Result<(), HlogError> {
    let hlog_err = |e: &dyn std::fmt::Display| HlogError(e.to_string());
    let start = UNIX_EPOCH + Duration::from_secs_f64(start_unix_s.max(0.0));
    let mut ser = V2DeflateSerializer::new();
    {
        let mut header = IntervalLogWriterBuilder::new();
        header
            .add_comment(comment)
            .add_comment("[Histogram log format version 1.3]")
            .add_comment("values in microseconds")
            .with_start_time(start)
            .with_base_time(start);
        header
            .begin_log_with(out, &mut ser)
            .map_err(|e| hlog_err(&e))?;
    }
    out.write_all(
        b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
    )
    .map_err(|e| hlog_err(&e))?;
    let mut w = IntervalLogWriterBuilder::new()
        .begin_log_with(out, &mut ser)
        .map_err(|e| hlog_err(&e))?;
    for (start_s, dur_s, h) in intervals {
        w.write_histogram(
            h,
            Duration::from_secs_f64(start_s.max(0.0)),
            Duration::from_secs_f64(dur_s.max(0.0)),
            None,
        )
        .map_err(|e| hlog_err(&e))?;
    }
    Ok(())
}
