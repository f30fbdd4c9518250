//! Shell completions (bash, zsh, fish) written from argh's own argument definitions
//! ([`ArgsInfo`]), so they list exactly the subcommands and flags the parser accepts.
//!
//! The shipped copies live in `systemd/completions/`; a test regenerates them and fails on any
//! difference (`LOWSCHED_BLESS=1 cargo test --lib completions` rewrites them).

use std::fmt::Write as _;

use argh::{ArgsInfo, CommandInfoWithArgs, FlagInfoKind};

use super::Cli;

/// A shell lowsched ships completions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Shell {
    pub const ALL: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

    /// The file name each shell looks for (`lowsched` for bash, `_lowsched` for zsh, ...).
    pub fn file_name(self) -> &'static str {
        match self {
            Shell::Bash => "lowsched.bash",
            Shell::Zsh => "_lowsched",
            Shell::Fish => "lowsched.fish",
        }
    }
}

/// The completion script for `shell`.
pub fn script(shell: Shell) -> String {
    let info = Cli::get_args_info();
    match shell {
        Shell::Bash => bash(&info),
        Shell::Zsh => zsh(&info),
        Shell::Fish => fish(&info),
    }
}

/// Every spelling of each flag of `cmd`, with `-h`/`--help`.
fn words(cmd: &CommandInfoWithArgs) -> Vec<String> {
    let mut w = Vec::new();
    for f in cmd.flags {
        if f.hidden {
            continue;
        }
        if let Some(c) = f.short {
            w.push(format!("-{c}"));
        }
        if !w.contains(&f.long.to_string()) {
            w.push(f.long.to_string());
        }
    }
    w
}

/// The flags of `cmd` that take a value (their next word is not completed as a flag).
fn options(cmd: &CommandInfoWithArgs) -> Vec<String> {
    let mut w = Vec::new();
    for f in cmd.flags {
        if let FlagInfoKind::Option { .. } = f.kind {
            w.push(f.long.to_string());
            if let Some(c) = f.short {
                w.push(format!("-{c}"));
            }
        }
    }
    w
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.trim_end_matches('.').replace('\'', "")
}

fn bash(info: &CommandInfoWithArgs) -> String {
    let subs: Vec<&str> = info.commands.iter().map(|c| c.name).collect();
    let mut s = String::from(
        "# bash completion for lowsched; generated from its argument definitions \
         (src/cli/completions.rs)\n\
         _lowsched() {\n    local cur prev sub i\n    cur=${COMP_WORDS[COMP_CWORD]}\n    \
         prev=${COMP_WORDS[COMP_CWORD-1]}\n    sub=\n    \
         for ((i = 1; i < COMP_CWORD; i++)); do\n        case ${COMP_WORDS[i]} in\n",
    );
    let _ = writeln!(
        s,
        "            {}) sub=${{COMP_WORDS[i]}}; break ;;",
        subs.join("|")
    );
    s.push_str("            --) return ;;\n        esac\n    done\n    case $sub in\n");
    let _ = writeln!(
        s,
        "        '') opts='{} {}'; vals='{}' ;;",
        words(info).join(" "),
        subs.join(" "),
        options(info).join(" ")
    );
    for c in &info.commands {
        let _ = writeln!(
            s,
            "        {}) opts='{}'; vals='{}' ;;",
            c.name,
            words(&c.command).join(" "),
            options(&c.command).join(" ")
        );
    }
    s.push_str(
        "    esac\n    if [[ \" $vals \" == *\" $prev \"* ]]; then\n        \
         COMPREPLY=($(compgen -f -- \"$cur\"))\n        return\n    fi\n    \
         COMPREPLY=($(compgen -W \"$opts\" -- \"$cur\"))\n}\n\
         complete -o default -F _lowsched lowsched\n",
    );
    s
}

fn zsh_flags(cmd: &CommandInfoWithArgs) -> String {
    let mut s = String::new();
    for f in cmd.flags.iter().filter(|f| !f.hidden) {
        let desc = first_line(f.description).replace(['[', ']', ':'], " ");
        let value = match f.kind {
            FlagInfoKind::Option { arg_name } => format!(":{arg_name}:_files"),
            FlagInfoKind::Switch => String::new(),
        };
        match f.short {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "    '({long} -{c})'{{-{c},{long}}}'[{desc}]{value}' \\",
                    long = f.long
                );
            }
            None => {
                let _ = writeln!(s, "    '{}[{desc}]{value}' \\", f.long);
            }
        }
    }
    s
}

fn zsh(info: &CommandInfoWithArgs) -> String {
    let mut s = String::from(
        "#compdef lowsched\n# zsh completion for lowsched; generated from its argument \
         definitions (src/cli/completions.rs)\n\n_lowsched() {\n  local -a subcommands\n  \
         subcommands=(\n",
    );
    for c in &info.commands {
        let desc = first_line(c.command.description).replace(':', " ");
        let _ = writeln!(s, "    '{}:{desc}'", c.name);
    }
    s.push_str("  )\n  _arguments -C \\\n");
    s.push_str(&zsh_flags(info));
    s.push_str(
        "    '1: :->sub' \\\n    '*:: :->args'\n  case $state in\n    \
         sub) _describe 'command' subcommands ;;\n    args)\n      case $words[1] in\n",
    );
    for c in &info.commands {
        let _ = write!(s, "        {})\n          _arguments \\\n", c.name);
        for line in zsh_flags(&c.command).lines() {
            let _ = writeln!(s, "      {line}");
        }
        s.push_str("            '*::argument:_files' ;;\n");
    }
    s.push_str("      esac ;;\n  esac\n}\n\n_lowsched \"$@\"\n");
    s
}

fn fish(info: &CommandInfoWithArgs) -> String {
    let subs: Vec<&str> = info.commands.iter().map(|c| c.name).collect();
    let mut s = String::from(
        "# fish completion for lowsched; generated from its argument definitions \
         (src/cli/completions.rs)\n",
    );
    let _ = writeln!(s, "set -l subs {}", subs.join(" "));
    let flag_line = |s: &mut String, cond: &str, f: &argh::FlagInfo<'_>| {
        let mut line = format!("complete -c lowsched -n '{cond}'");
        if let Some(c) = f.short {
            let _ = write!(line, " -s {c}");
        }
        let _ = write!(line, " -l {}", f.long.trim_start_matches("--"));
        if let FlagInfoKind::Option { .. } = f.kind {
            line.push_str(" -r");
        }
        let _ = writeln!(
            s,
            "{line} -d '{}'",
            first_line(f.description).replace('\'', "")
        );
    };
    for f in info.flags.iter().filter(|f| !f.hidden) {
        flag_line(&mut s, "not __fish_seen_subcommand_from $subs", f);
    }
    for c in &info.commands {
        let _ = writeln!(
            s,
            "complete -c lowsched -f -n 'not __fish_seen_subcommand_from $subs' -a {} -d '{}'",
            c.name,
            first_line(c.command.description)
        );
        let cond = format!("__fish_seen_subcommand_from {}", c.name);
        for f in c.command.flags.iter().filter(|f| !f.hidden) {
            flag_line(&mut s, &cond, f);
        }
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The shipped file at `systemd/<rel>` equals `generated` (or is rewritten to it when
    /// `LOWSCHED_BLESS` is set).
    pub(crate) fn shipped_matches(rel: &str, generated: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("systemd")
            .join(rel);
        if std::env::var_os("LOWSCHED_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
            std::fs::write(&path, generated).expect("write");
            return;
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == generated,
            "{} differs from what the argument definitions give: run \
             LOWSCHED_BLESS=1 cargo test --lib completions man_page",
            path.display()
        );
    }

    #[test]
    fn shipped_completions_match_the_argument_definitions() {
        for shell in Shell::ALL {
            shipped_matches(
                &format!("completions/{}", shell.file_name()),
                &script(shell),
            );
        }
    }

    #[test]
    fn every_subcommand_and_flag_is_offered() {
        let info = Cli::get_args_info();
        for shell in Shell::ALL {
            let text = script(shell);
            for c in &info.commands {
                assert!(text.contains(c.name), "{shell:?} lacks {}", c.name);
                for f in c.command.flags {
                    let long = f.long.trim_start_matches("--");
                    assert!(text.contains(long), "{shell:?} lacks {} {long}", c.name);
                }
            }
        }
        let bash = script(Shell::Bash);
        assert!(bash.contains("-J --name"), "{bash}");
        assert!(bash.contains("-c --cpus"), "{bash}");
    }
}
