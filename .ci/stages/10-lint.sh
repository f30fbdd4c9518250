#!/usr/bin/env bash
# Formatting and lints, as the brief requires: both must be clean.
set -euo pipefail
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
