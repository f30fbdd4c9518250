#!/usr/bin/env bash
# Unit tests and host integration tests (root, hybrid cgroups, real memcached and stress-ng).
set -euo pipefail
cargo test --locked --all-targets
