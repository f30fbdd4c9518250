//! The `lowsched` command: parses arguments and hands over to the library.

use argh::FromArgs;

#[derive(FromArgs, Debug)]
/// lowsched: keeps a latency-critical service inside its SLO while batch jobs use the spare cores.
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Loadgen(lowsched::loadgen::LoadgenArgs),
}

fn main() -> anyhow::Result<()> {
    let cli: Cli = argh::from_env();
    match cli.command {
        Command::Loadgen(args) => lowsched::loadgen::run(args)?,
    }
    Ok(())
}
