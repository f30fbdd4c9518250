//! Text that reaches people: which characters are unsafe on a terminal and how to show them
//! escaped, and the forms messages use for user-given text and durations (never Rust's debug
//! formatting).

use std::fmt;
use std::time::Duration;

/// A character that can change what a terminal shows beyond itself: controls (C0, DEL, C1)
/// and the Unicode bidirectional overrides and isolates.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every [`is_unsafe_char`] written as a visible escape (`\u{1b}`), for output that
/// reaches a terminal; other text, non-ASCII letters included, is kept as is.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `"text"`: the text in double quotes, control and bidi characters escaped (`\u{1b}`).
#[derive(Clone, Copy, Debug)]
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", escape_controls(self.0))
    }
}

/// Shorthand: `quoted(&name)` in a `format!` argument.
pub fn quoted(s: &str) -> Quoted<'_> {
    Quoted(s)
}

/// A duration for people: `250 ms` below a second, else seconds with up to three decimals
/// (`1.5 s`, `30 s`).
#[derive(Clone, Copy, Debug)]
pub struct Span(pub Duration);

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d < Duration::from_secs(1) {
            let ms = d.as_secs_f64() * 1000.0;
            let text = format!("{ms:.3}");
            let text = text.trim_end_matches('0').trim_end_matches('.');
            return write!(f, "{text} ms");
        }
        let text = format!("{:.3}", d.as_secs_f64());
        write!(f, "{} s", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// Shorthand: `span(&d)`, also for a field in an error attribute.
pub fn span(d: &Duration) -> Span {
    Span(*d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_escapes_controls_only() {
        assert_eq!(quoted("8 GB").to_string(), "\"8 GB\"");
        assert_eq!(quoted("a\u{1b}[2Jb").to_string(), "\"a\\u{1b}[2Jb\"");
        assert_eq!(quoted("é").to_string(), "\"é\"");
    }

    #[test]
    fn spans_read_as_milliseconds_or_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(Span(ms(250)).to_string(), "250 ms");
        assert_eq!(Span(Duration::from_micros(1500)).to_string(), "1.5 ms");
        assert_eq!(Span(ms(1500)).to_string(), "1.5 s");
        assert_eq!(Span(ms(30_000)).to_string(), "30 s");
        assert_eq!(Span(Duration::ZERO).to_string(), "0 ms");
    }
}
