#!/usr/bin/env bash
# The daemon's main job on a fresh Debian/Ubuntu machine with nothing but Rust: installs the
# GStreamer packages it needs, starts the local Kinesis endpoint on 127.0.0.1 (no AWS account
# needed), streams the GStreamer test sources (a moving picture and a tone) to it for
# DURATION seconds (default 30) with `kinesis-edge run` (which also sends device and camera
# health every 5 s to the endpoint's Kinesis data stream "kinesis-edge-telemetry"), stops the
# daemon with SIGTERM, and points at the playable file of what arrived.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --locked --features local-endpoint
bin=./target/release/kinesis-edge
state=.kinesis-edge
port=${PORT:-4566}
mkdir -p "$state"
rm -rf "$state/local-endpoint"

export AWS_REGION=us-west-2 AWS_ACCESS_KEY_ID=AKIDLOCALDEMO AWS_SECRET_ACCESS_KEY=local-demo-secret
export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
"$bin" local-endpoint --listen "127.0.0.1:$port" --data-dir "$state/local-endpoint" \
  --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
  --data-stream kinesis-edge-telemetry:1 \
  >"$state/local-endpoint.log" 2>&1 &
endpoint=$!
trap 'kill $endpoint 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  grep -q "local endpoint on" "$state/local-endpoint.log" 2>/dev/null && break
  sleep 0.1
done

"$bin" check-config --config config/demo.toml
"$bin" run --config config/demo.toml &
daemon=$!
sleep "${DURATION:-30}"
kill -TERM "$daemon"
wait "$daemon"

file="$state/local-endpoint/kinesis-edge-demo.mkv"
echo
echo "What arrived at the local endpoint: $file"
ffprobe -v error -show_entries stream=codec_name,width,height,sample_rate -of compact "$file" || true
echo "Play it with: ffplay $file    (fragment log: ${file%.mkv}.fragments.jsonl)"
