//! Daemon logging to stderr with sd-daemon priority prefixes (`<3>` error … `<7>` debug), which
//! journald turns into log levels.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// sd-daemon / syslog priorities.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    Error = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Messages above `level` (less important) are dropped.
pub fn set_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Parses `error`, `warning`, `notice`, `info`, `debug`.
pub fn parse_level(s: &str) -> Option<Level> {
    Some(match s {
        "error" => Level::Error,
        "warning" | "warn" => Level::Warning,
        "notice" => Level::Notice,
        "info" => Level::Info,
        "debug" => Level::Debug,
        _ => return None,
    })
}

/// The line as written, without the newline; one line per message (embedded newlines are
/// flattened so journald keeps the priority for the whole message).
pub fn format(level: Level, msg: &str) -> String {
    format!("<{}>{}", level as u8, msg.replace('\n', " | "))
}

pub fn log(level: Level, msg: &str) {
    if level as u8 > MAX_LEVEL.load(Ordering::Relaxed) {
        return;
    }
    let mut line = format(level, msg);
    line.push('\n');
    // One write per line so concurrent threads do not interleave within a line.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn error(msg: &str) {
    log(Level::Error, msg);
}

pub fn warn(msg: &str) {
    log(Level::Warning, msg);
}

pub fn notice(msg: &str) {
    log(Level::Notice, msg);
}

pub fn info(msg: &str) {
    log(Level::Info, msg);
}

pub fn debug(msg: &str) {
    log(Level::Debug, msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_single_lines() {
        assert_eq!(format(Level::Error, "x"), "<3>x");
        assert_eq!(format(Level::Debug, "a\nb"), "<7>a | b");
        assert_eq!(parse_level("warning"), Some(Level::Warning));
        assert_eq!(parse_level("loud"), None);
    }
}
