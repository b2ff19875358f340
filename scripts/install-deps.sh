#!/usr/bin/env bash
# Installs the system packages kinesis-edge builds, runs and is tested with, on Debian/Ubuntu.
# Idempotent: packages already present are not touched and apt is not even updated.
# Usage: scripts/install-deps.sh [--test]   (--test adds the tools the test suite checks output with)
set -euo pipefail

packages=(
  pkg-config libclang-dev
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools gstreamer1.0-alsa
  ffmpeg
)
with_tests=false
if [[ "${1:-}" == "--test" ]]; then
  with_tests=true
  packages+=(mkvtoolnix python3 python3-venv util-linux)
  command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  echo "installing: ${missing[*]}" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The tools the tests check our Kinesis Data Streams output with: moto_server and kinesalite
# (local Kinesis servers), boto3 and aws-kinesis-agg (reading back and de-aggregating). They go
# under target/test-tools so nothing is installed system-wide; scripts/test.sh puts them first
# on PATH.
if $with_tests; then
  tools="$(cd "$(dirname "$0")/.." && pwd)/target/test-tools"
  mkdir -p "$tools"
  if ! "$tools/venv/bin/python3" -c "import moto.server, flask, boto3, aws_kinesis_agg" 2>/dev/null; then
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/python3" -m pip install --quiet --disable-pip-version-check \
      'moto[server]' boto3 aws-kinesis-agg
  fi
  if [[ ! -f "$tools/kinesalite/node_modules/kinesalite/package.json" ]]; then
    npm install --silent --no-audit --no-fund --prefix "$tools/kinesalite" kinesalite@3.3.3
  fi
fi
