//! `lowsched-shim`: the per-job waiter the daemon starts; see `lowsched::shim`.

fn main() {
    std::process::exit(lowsched::shim::main())
}
