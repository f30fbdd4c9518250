//! The thin pre-parse in front of argh: what argh does not do, done on the raw arguments.
//!
//! argh (the design card's parser) lacks three conventions users expect:
//! - `-V` / `--version` before any subcommand: answered here, argh never sees it;
//! - `--flag=value`: split into `--flag value` when `--flag` is an option (takes a value) of
//!   the subcommand being parsed, as argh's own definitions ([`ArgsInfo`]) list them;
//! - nothing else is rewritten: a switch given `=value`, an unknown flag, everything after
//!   `--`, and, for `submit`, everything from the job's command on (its greedy positional)
//!   stay as typed, so a job's own `--opt=value` reaches the job untouched.
//!
//! Short letters (`-J`, `-c`, ...) and `-h` are argh's own (`short =`, `help_triggers`).

use argh::{ArgsInfo, CommandInfoWithArgs, FlagInfoKind};

use super::Cli;

/// What the pre-parse decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Preparsed {
    /// Print the version and exit.
    Version,
    /// Hand these arguments (without the program name) to argh.
    Args(Vec<String>),
}

/// `lowsched 0.1.0`.
pub fn version_line() -> String {
    format!("lowsched {}", env!("CARGO_PKG_VERSION"))
}

/// Rewrites `args` (without the program name) for argh.
pub fn preparse(args: Vec<String>) -> Preparsed {
    let info = Cli::get_args_info();
    let mut out = Vec::with_capacity(args.len());
    // The subcommand's index in `info.commands`, once seen.
    let mut sub: Option<usize> = None;
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let cmd = sub.map_or(&info, |i| &info.commands[i].command);
        if arg == "--" {
            out.push(arg);
            out.extend(iter);
            break;
        }
        if sub.is_none() && (arg == "-V" || arg == "--version") {
            return Preparsed::Version;
        }
        if let Some((flag, value)) = split_option(cmd, &arg) {
            out.push(flag);
            out.push(value);
            continue;
        }
        if let Some(takes_value) = option_of(cmd, &arg) {
            // An option's value is never itself a flag, a subcommand or the job's command.
            out.push(arg);
            if takes_value {
                out.extend(iter.next());
            }
            continue;
        }
        if arg.starts_with('-') {
            out.push(arg);
            continue;
        }
        if sub.is_none() {
            if let Some(i) = info.commands.iter().position(|c| c.name == arg) {
                sub = Some(i);
                out.push(arg);
                continue;
            }
        }
        // A positional: for a greedy one (submit's command) the rest is the job's own.
        let greedy = cmd.positionals.iter().any(|p| p.name == "command");
        out.push(arg);
        if greedy {
            out.extend(iter);
            break;
        }
    }
    Preparsed::Args(out)
}

/// The subcommand `args` (as given to argh) name, if any.
pub fn subcommand(args: &[String]) -> Option<&'static str> {
    let info = Cli::get_args_info();
    let names: Vec<&'static str> = info.commands.iter().map(|c| c.name).collect();
    args.iter()
        .take_while(|a| *a != "--")
        .find_map(|a| names.iter().find(|n| **n == a.as_str()).copied())
}

/// `--flag=value` split when `--flag` is an option of `cmd`.
fn split_option(cmd: &CommandInfoWithArgs, arg: &str) -> Option<(String, String)> {
    let (flag, value) = arg.split_once('=')?;
    if !flag.starts_with("--") {
        return None;
    }
    matches!(option_of(cmd, flag), Some(true)).then(|| (flag.to_string(), value.to_string()))
}

/// `Some(true)` when `arg` names an option (takes a value) of `cmd`, `Some(false)` for a switch.
fn option_of(cmd: &CommandInfoWithArgs, arg: &str) -> Option<bool> {
    let flag = cmd
        .flags
        .iter()
        .find(|f| f.long == arg || f.short.is_some_and(|c| arg.len() == 2 && arg.ends_with(c)))?;
    Some(matches!(flag.kind, FlagInfoKind::Option { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(args: &[&str]) -> Vec<String> {
        match preparse(args.iter().map(|s| s.to_string()).collect()) {
            Preparsed::Args(a) => a,
            Preparsed::Version => vec!["<version>".into()],
        }
    }

    #[test]
    fn flag_equals_value_is_split_for_options_only() {
        assert_eq!(
            pre(&["--socket=/s", "submit", "--cpus=2", "--name=a=b", "--", "x"]),
            [
                "--socket", "/s", "submit", "--cpus", "2", "--name", "a=b", "--", "x"
            ]
        );
        // A switch with a value and an unknown flag stay as typed, for argh to refuse.
        assert_eq!(pre(&["status", "--json=1"]), ["status", "--json=1"]);
        assert_eq!(pre(&["status", "--json", "7"]), ["status", "--json", "7"]);
        assert_eq!(pre(&["submit", "--cpu=2", "x"]), ["submit", "--cpu=2", "x"]);
    }

    #[test]
    fn the_jobs_own_arguments_are_never_rewritten() {
        assert_eq!(
            pre(&["submit", "-c", "1", "--", "env", "--cpus=3", "-V"]),
            ["submit", "-c", "1", "--", "env", "--cpus=3", "-V"]
        );
        assert_eq!(
            pre(&["submit", "sleep", "--cpus=3"]),
            ["submit", "sleep", "--cpus=3"]
        );
        // An option's value is not mistaken for the command.
        assert_eq!(
            pre(&["submit", "--name", "n", "--memory=1G", "x", "--memory=2G"]),
            [
                "submit",
                "--name",
                "n",
                "--memory",
                "1G",
                "x",
                "--memory=2G"
            ]
        );
    }

    #[test]
    fn version_is_answered_before_any_subcommand_only() {
        assert_eq!(pre(&["-V"]), ["<version>"]);
        assert_eq!(pre(&["--socket", "/s", "--version"]), ["<version>"]);
        assert_eq!(pre(&["submit", "--", "-V"]), ["submit", "--", "-V"]);
        assert!(version_line().starts_with("lowsched 0."));
    }
}
