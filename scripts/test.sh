#!/usr/bin/env bash
# Runs every test of kinesis-edge: installs what the suite needs (system packages, and the Python
# and Node tools that check our output), then the unit, property and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
cargo test --all-features --locked "$@"
