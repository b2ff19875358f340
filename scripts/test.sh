#!/usr/bin/env bash
# Runs every test of kinesis-edge: installs what the suite needs (system packages, and the Python
# and Node tools that check our output), then the unit, property and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
tools="$PWD/target/test-tools"
export PATH="$tools/venv/bin:$PATH" KINESALITE_DIR="$tools/kinesalite"
# Tests that need an external tool fail, rather than skip, when it is missing.
export KINESIS_EDGE_REQUIRE_TOOLS=1
cargo test --all-features --locked "$@"
