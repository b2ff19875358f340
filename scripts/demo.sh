#!/usr/bin/env bash
# The daemon's main job on a fresh Debian/Ubuntu machine with nothing but Rust: installs the
# GStreamer packages it needs, then records 20 s from the GStreamer test sources (a moving picture
# and a tone) into Kinesis Video Streams fragments, written to demo.mkv exactly as they would be sent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked
./target/release/kinesis-edge check-config --config config/demo.toml
./target/release/kinesis-edge record --config config/demo.toml --duration "${DURATION:-20}" --output demo.mkv
echo "Recorded demo.mkv: play it with 'ffplay demo.mkv' or inspect it with 'mkvinfo demo.mkv'."
