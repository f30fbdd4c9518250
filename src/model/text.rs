//! Text that reaches other users' terminals: which characters are unsafe there, and how to show
//! them escaped.

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
