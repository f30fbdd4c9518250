#![allow(clippy::unwrap_used)]
//! The layout's rules, checked on the source text: which stage may use which (`crate::` paths,
//! in `use` lines and inline), `unsafe` only in `src/sys/`, files under 600 lines, and no Rust
//! debug formatting (`{:?}`) in messages: only in tests, assertions, panics and `Debug` impls.
//!
//! Problem: a plain text search would trip on comments and strings (`// unsafe`, `"crate::sys"`).
//! Approach: blank out comments, string and char literals (keeping line breaks, so line numbers
//! stay right), then look for `crate::NAME` (also inside `crate::{a, b::c}` groups) and for the
//! word `unsafe` in what is left.

use std::path::{Path, PathBuf};

/// Longest a file under `src/` may be.
const MAX_LINES: usize = 600;

/// Files over [`MAX_LINES`] that their owner is splitting; each entry says whose it is. Keep it
/// empty: an entry is a debt, not a licence.
const BEING_SPLIT: &[(&str, &str)] = &[];

/// `(stage, stages it must not use)`, stage being the folder under `src/`: what each stage's
/// `mod.rs` says it may use, turned around.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "model",
        &[
            "sys", "sense", "decide", "node", "store", "api", "daemon", "cli", "tools",
        ],
    ),
    (
        "decide",
        &[
            "sys", "sense", "node", "store", "api", "daemon", "cli", "tools",
        ],
    ),
    (
        "sense",
        &["decide", "node", "store", "api", "daemon", "cli", "tools"],
    ),
    (
        "store",
        &[
            "sys", "sense", "decide", "node", "api", "daemon", "cli", "tools",
        ],
    ),
    ("node", &["sense", "api", "daemon", "cli", "tools"]),
    (
        "api",
        &["sys", "sense", "decide", "node", "daemon", "cli", "tools"],
    ),
    (
        "sys",
        &[
            "model", "sense", "decide", "node", "store", "api", "daemon", "cli", "tools",
        ],
    ),
    ("daemon", &["cli", "tools"]),
];

/// The first folder under `src/` (`decide` for `src/decide/policy/rank.rs`), if any.
fn stage_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("src/")?;
    let (stage, _) = rest.split_once('/')?;
    Some(stage)
}

/// `text` with comments, string literals and char literals replaced by spaces (line breaks
/// kept).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(i + k).copied().unwrap_or('\0');
        if at(0) == '/' && at(1) == '/' {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if at(0) == '/' && at(1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if let Some(len) = raw_string_len(&c[i..]) {
            for &ch in &c[i..i + len] {
                blank(&mut out, ch);
            }
            i += len;
        } else if at(0) == '"' {
            blank(&mut out, c[i]);
            i += 1;
            while i < c.len() && c[i] != '"' {
                let step = if c[i] == '\\' { 2 } else { 1 };
                for &ch in c.iter().skip(i).take(step) {
                    blank(&mut out, ch);
                }
                i += step;
            }
            if i < c.len() {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if at(0) == '\'' && (at(1) == '\\' || at(2) == '\'') {
            // A char literal ('x', '\n', '\''); a lifetime ('a) has no closing quote there.
            let mut j = i + 1;
            if c[j] == '\\' {
                j += 2;
            }
            while j < c.len() && c[j] != '\'' {
                j += 1;
            }
            for &ch in &c[i..=j.min(c.len() - 1)] {
                blank(&mut out, ch);
            }
            i = j + 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// Length of a raw string literal (`r"…"`, `r#"…"#`, `br#"…"#`) starting at `c[0]`.
fn raw_string_len(c: &[char]) -> Option<usize> {
    let mut i = usize::from(c.first() == Some(&'b'));
    if c.get(i) != Some(&'r') {
        return None;
    }
    i += 1;
    let hashes = c[i..].iter().take_while(|&&ch| ch == '#').count();
    i += hashes;
    if c.get(i) != Some(&'"') {
        return None;
    }
    i += 1;
    while i < c.len() {
        if c[i] == '"'
            && c[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&h| h == '#')
                .count()
                == hashes
        {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    Some(c.len())
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// Every stage the code names through `crate::`, with its line: `crate::sys::x`, and each
/// top-level item of a `crate::{sys::x, model}` group (which may span lines).
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    // The line of the first non-blank character at or after `at`.
    let line_of = |at: usize| {
        let blank = code[at..].len() - code[at..].trim_start().len();
        code[..at + blank].matches('\n').count() + 1
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue; // `some_crate::`, not this crate
        }
        let start = at + "crate::".len();
        let rest = &code[start..];
        let skipped = rest.len() - rest.trim_start().len();
        let Some(group) = rest.trim_start().strip_prefix('{') else {
            found.push((line_of(start + skipped), first_ident(rest)));
            continue;
        };
        let group_at = start + skipped + 1;
        let mut depth = 0;
        let mut item_at = group_at;
        for (k, ch) in group.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    found.push((line_of(item_at), first_ident(&code[item_at..group_at + k])));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    found.push((line_of(item_at), first_ident(&code[item_at..group_at + k])));
                    item_at = group_at + k + 1;
                }
                _ => {}
            }
        }
    }
    found.retain(|(_, s)| !s.is_empty());
    found
}

fn first_ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|&ch| is_ident(ch))
        .collect()
}

/// Whether `line` (code only) has the word `unsafe`.
fn has_unsafe(line: &str) -> bool {
    line.match_indices("unsafe").any(|(at, w)| {
        let before = line[..at].chars().next_back();
        let after = line[at + w.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// Every rule `text` (the file at `path`, relative to the crate root) breaks, one message each,
/// naming the file and line.
fn violations(path: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let stage = stage_of(path);
    let forbidden = FORBIDDEN
        .iter()
        .find(|(s, _)| Some(*s) == stage)
        .map_or(&[][..], |(_, f)| *f);
    let code = code_only(text);
    for (line_no, used) in crate_paths(&code) {
        if forbidden.contains(&used.as_str()) {
            out.push(format!(
                "{path}:{line_no}: {}/ must not use {used}/ (crate::{used})",
                stage.unwrap_or("?")
            ));
        }
    }
    for (n, line) in code.lines().enumerate() {
        let line_no = n + 1;
        if stage != Some("sys") && has_unsafe(line) {
            out.push(format!(
                "{path}:{line_no}: `unsafe` outside src/sys/ (move it into a safe wrapper there)"
            ));
        }
    }
    let lines = text.lines().count();
    if lines > MAX_LINES && !BEING_SPLIT.iter().any(|(p, _)| *p == path) {
        out.push(format!(
            "{path}:{}: {lines} lines, more than {MAX_LINES}: split it by responsibility",
            MAX_LINES + 1
        ));
    }
    out
}

/// Every string literal of `text` outside comments: (char offset, line, content).
fn literals(text: &str) -> Vec<(usize, usize, String)> {
    let c: Vec<char> = text.chars().collect();
    let code: Vec<char> = code_only(text).chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        // A literal starts where the code (comments and literals blanked) has a blank but the
        // text has an opening quote that is not inside a comment.
        let starts = code[i] == ' ' && (c[i] == '"' || raw_string_len(&c[i..]).is_some());
        let in_comment = starts && {
            let line_start = c[..i]
                .iter()
                .rposition(|&ch| ch == '\n')
                .map_or(0, |p| p + 1);
            let before: String = c[line_start..i].iter().collect();
            before.contains("//") || before.trim_start().starts_with('*')
        };
        if !starts || in_comment || (i > 0 && code[i - 1] == ' ' && c[i - 1] == '\'') {
            i += 1;
            continue;
        }
        let len = raw_string_len(&c[i..]).unwrap_or_else(|| {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            j + 1 - i
        });
        let end = (i + len).min(c.len());
        let line = c[..i].iter().filter(|&&ch| ch == '\n').count() + 1;
        out.push((i, line, c[i..end].iter().collect()));
        i = end;
    }
    out
}

/// Lines of `text` (a non-test source file) that put Rust's debug formatting (`{:?}`,
/// `{x:?}`, `{:#?}`) into a message. Allowed: `assert*!`, `panic!`, `unreachable!` and
/// `Debug` impls, which speak to developers. Inline `mod tests` at the end is skipped.
fn debug_formats(path: &str, text: &str) -> Vec<String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.starts_with("tests") {
        return Vec::new();
    }
    let text = text
        .split("\n#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or(text);
    let code: Vec<char> = code_only(text).chars().collect();
    let mut out = Vec::new();
    for (at, line, lit) in literals(text) {
        let debug = lit
            .match_indices(":?}")
            .chain(lit.match_indices(":#?}"))
            .any(|(k, _)| {
                let open = lit[..k].rfind('{');
                // `{{:?}}` is a literal brace, not a placeholder.
                let escaped = |o: usize| o > 0 && lit.as_bytes()[o - 1] == b'{';
                open.is_some_and(|o| {
                    !escaped(o) && lit[o + 1..k].chars().all(|ch| is_ident(ch) || ch == '.')
                })
            });
        if !debug {
            continue;
        }
        let before: String = code[..at].iter().collect();
        let statement = before
            .rfind([';', '{', '}'])
            .map_or(before.as_str(), |k| &before[k..]);
        let in_check = ["assert", "panic!", "unreachable!"]
            .iter()
            .any(|m| statement.contains(m));
        let in_debug_impl = before.rfind("impl").is_some_and(|k| {
            let head = &before[k..];
            let decl = head.split('{').next().unwrap_or("");
            // Inside when the impl's block has not closed before the literal.
            let mut depth = 0i32;
            let open_all_along = head[decl.len()..].chars().all(|ch| {
                depth += match ch {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                depth > 0
            });
            decl.contains("Debug for") && open_all_along
        });
        if !in_check && !in_debug_impl {
            out.push(format!(
                "{path}:{line}: debug formatting in a message (write a Display form, or \
                 quote text with model::text::quoted)"
            ));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_source_tree_keeps_the_layout_rules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    assert!(
        files.len() > 50,
        "found only {} files under src/",
        files.len()
    );
    let mut broken = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(file).unwrap();
        broken.extend(violations(&rel, &text));
        broken.extend(debug_formats(&rel, &text));
    }
    assert!(broken.is_empty(), "\n{}\n", broken.join("\n"));
}

#[test]
fn files_being_split_are_still_too_long() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (path, owner) in BEING_SPLIT {
        let lines = std::fs::read_to_string(root.join(path)).map_or(0, |t| t.lines().count());
        assert!(
            lines > MAX_LINES,
            "{path} ({owner}) has {lines} lines now: drop it from BEING_SPLIT"
        );
    }
}

#[test]
fn a_pure_stage_importing_the_node_is_caught_with_file_and_line() {
    let v = violations(
        "src/decide/x.rs",
        "//! ok\nuse crate::model::job::JobId;\nuse crate::sys::clock;\n",
    );
    assert_eq!(
        v,
        ["src/decide/x.rs:3: decide/ must not use sys/ (crate::sys)"]
    );
    let v = violations(
        "src/model/y.rs",
        "fn f() { crate::store::journal::open(); }\n",
    );
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].starts_with("src/model/y.rs:1: model/ must not use store/"));
}

#[test]
fn grouped_imports_are_read_item_by_item() {
    let v = violations(
        "src/decide/x.rs",
        "use crate::{\n    model::job::JobId,\n    node::{cgroup, actuator},\n};\n",
    );
    assert_eq!(
        v,
        ["src/decide/x.rs:3: decide/ must not use node/ (crate::node)"]
    );
}

#[test]
fn each_stage_rule_fires() {
    for (stage, used) in [
        ("sense", "daemon"),
        ("daemon", "tools"),
        ("node", "tools"),
        ("decide", "tools"),
        ("store", "tools"),
        ("sense", "tools"),
        ("model", "cli"),
        ("decide", "daemon"),
    ] {
        let v = violations(
            &format!("src/{stage}/a.rs"),
            &format!("use crate::{used}::x;\n"),
        );
        assert_eq!(v.len(), 1, "{stage} using {used}: {v:?}");
    }
    // Allowed directions stay quiet.
    assert!(violations("src/cli/a.rs", "use crate::tools::loadgen;\n").is_empty());
    assert!(violations("src/daemon/a.rs", "use crate::node::actuator;\n").is_empty());
    assert!(violations("src/sense/a.rs", "use crate::sys::uring;\n").is_empty());
}

#[test]
fn unsafe_outside_sys_is_caught_but_not_in_comments_or_strings() {
    let v = violations(
        "src/node/a.rs",
        "// unsafe here is prose\nlet s = \"unsafe\";\nlet r = r#\"unsafe \"x\"\"#;\n\
         /* unsafe /* nested */ unsafe */\n#![deny(unsafe_code)]\nunsafe { f() }\n",
    );
    assert_eq!(
        v,
        ["src/node/a.rs:6: `unsafe` outside src/sys/ (move it into a safe wrapper there)"]
    );
    assert_eq!(violations("src/api/b.rs", "unsafe fn f() {}\n").len(), 1);
    assert_eq!(
        violations("src/api/b.rs", "unsafe impl Send for X {}\n").len(),
        1
    );
    assert!(violations("src/sys/c.rs", "unsafe { f() }\n").is_empty());
}

#[test]
fn paths_in_comments_strings_and_chars_are_not_imports() {
    let text = "// use crate::sys::x;\nlet s = \"crate::sys\";\nlet c = '\"'; let d = \"crate::node\";\n\
                fn f<'a>(x: &'a str) -> &'a str { x }\nlet q = '\\''; // crate::daemon\n";
    assert!(
        violations("src/decide/a.rs", text).is_empty(),
        "{:?}",
        violations("src/decide/a.rs", text)
    );
}

#[test]
fn a_long_file_is_named_with_its_count() {
    let text = "fn f() {}\n".repeat(MAX_LINES + 1);
    let v = violations("src/cli/long.rs", &text);
    assert_eq!(
        v,
        ["src/cli/long.rs:601: 601 lines, more than 600: split it by responsibility"]
    );
    assert!(violations("src/cli/ok.rs", &"x\n".repeat(MAX_LINES)).is_empty());
}

#[test]
fn debug_formatting_is_caught_in_messages_but_not_in_checks_or_debug_impls() {
    let text = "fn a() { log(&format!(\"bad {name:?}\")); }\n\
                #[error(\"x {0:?}\")]\n\
                fn b() { assert!(x, \"{v:?}\"); panic!(\"{:?}\", y); }\n\
                impl fmt::Debug for X { fn fmt(&self) { write!(f, \"X({:?})\", self.0) } }\n\
                // a comment \"{c:?}\"\n\
                fn c() { let s = \"{:>8} {{:?}} ok\"; write!(f, \"{:#?}\", z); }\n";
    let v = debug_formats("src/api/a.rs", text);
    assert_eq!(
        v.iter()
            .map(|m| m.split(':').nth(1).unwrap())
            .collect::<Vec<_>>(),
        ["1", "2", "6"],
        "{v:?}"
    );
    assert!(debug_formats("src/api/tests.rs", text).is_empty());
    let tail = "fn f() {}\n#[cfg(test)]\nmod tests {\n fn g() { f(\"{x:?}\"); }\n}\n";
    assert!(debug_formats("src/api/b.rs", tail).is_empty());
}
