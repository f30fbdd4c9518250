//! The `lowsched` command: parses arguments and hands over to the library.

fn main() -> anyhow::Result<()> {
    eprintln!("lowsched: daemon not built yet");
    std::process::exit(2)
}
