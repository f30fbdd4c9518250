//! The `lowsched` command: parses arguments and hands over to the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    lowsched::cli::main()
}
