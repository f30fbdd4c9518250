//! `lowsched-shim`: the per-job waiter the daemon starts; see `lowsched::node::shim`.

fn main() {
    std::process::exit(lowsched::node::shim::main())
}
