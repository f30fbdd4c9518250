//! The `lowsched(1)` man page, written from argh's own argument definitions ([`ArgsInfo`]) so it
//! lists exactly the subcommands, flags and positionals the parser accepts.
//!
//! The shipped copy is `systemd/lowsched.1`; a test regenerates it and fails on any difference
//! (`LOWSCHED_BLESS=1 cargo test --lib man_page` rewrites it).

use std::fmt::Write as _;

use argh::{ArgsInfo, CommandInfoWithArgs, FlagInfoKind};

use super::Cli;

/// roff-escapes `text`: backslashes, and a leading `.` or `'` that would start a request.
fn esc(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

fn flags(s: &mut String, cmd: &CommandInfoWithArgs) {
    for f in cmd.flags.iter().filter(|f| !f.hidden) {
        let mut head = String::new();
        if let Some(c) = f.short {
            let _ = write!(head, "\\fB\\-{c}\\fR, ");
        }
        let _ = write!(head, "\\fB{}\\fR", esc(f.long));
        if let FlagInfoKind::Option { arg_name } = f.kind {
            let _ = write!(head, " \\fI{}\\fR", esc(arg_name));
        }
        let _ = writeln!(s, ".TP\n{head}\n{}", esc(f.description));
    }
    for p in cmd.positionals.iter().filter(|p| !p.hidden) {
        let _ = writeln!(s, ".TP\n\\fI{}\\fR\n{}", esc(p.name), esc(p.description));
    }
}

/// The man page, in roff.
pub fn page() -> String {
    let info = Cli::get_args_info();
    let mut s = String::new();
    let _ = writeln!(
        s,
        ".\\\" Generated from lowsched's argument definitions (src/cli/man.rs); do not edit.\n\
         .TH LOWSCHED 1 \"\" \"lowsched {}\" \"User Commands\"\n\
         .SH NAME\nlowsched \\- {}\n\
         .SH SYNOPSIS\n\\fBlowsched\\fR [\\fB\\-\\-socket\\fR \\fIPATH\\fR] \\fICOMMAND\\fR \
         [\\fIOPTIONS\\fR] [\\fIARGS\\fR]\n.br\n\\fBlowsched\\fR \\fB\\-V\\fR|\\fB\\-\\-version\\fR\n\
         .SH DESCRIPTION\n{}\n.PP\nEvery command takes \\fB\\-h\\fR/\\fB\\-\\-help\\fR. An option's \
         value may follow it as the next word or after \\fB=\\fR (\\fB\\-\\-cpus=2\\fR).\n\
         .SH OPTIONS",
        env!("CARGO_PKG_VERSION"),
        esc(info
            .description
            .trim_start_matches("lowsched: ")
            .trim_end_matches('.')),
        esc(info.description),
    );
    flags(&mut s, &info);
    s.push_str(".SH COMMANDS\n");
    for c in &info.commands {
        let _ = writeln!(
            s,
            ".SS \"lowsched {}\"\n{}",
            c.name,
            esc(c.command.description)
        );
        flags(&mut s, &c.command);
    }
    s.push_str(
        ".SH FILES\n.TP\n/etc/lowsched/lowsched.toml\nthe daemon's configuration\n\
         .TP\n/run/lowsched/lowsched.sock\nthe daemon's socket (\\fB$LOWSCHED_SOCKET\\fR overrides)\n\
         .SH SEE ALSO\nThe README in the documentation directory, \\fBsystemctl\\fR(1).\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_shipped_matches_the_argument_definitions() {
        super::super::completions::tests::shipped_matches("lowsched.1", &page());
    }

    #[test]
    fn man_page_names_every_subcommand_flag_and_positional() {
        let text = page();
        let info = Cli::get_args_info();
        for c in &info.commands {
            assert!(text.contains(&format!("lowsched {}", c.name)), "{}", c.name);
            for f in c.command.flags {
                assert!(text.contains(&esc(f.long)), "{} {}", c.name, f.long);
            }
            for p in c.command.positionals {
                assert!(
                    !p.description.is_empty(),
                    "{} <{}> has no help",
                    c.name,
                    p.name
                );
                assert!(text.contains(&esc(p.description)), "{} {}", c.name, p.name);
            }
        }
    }
}
