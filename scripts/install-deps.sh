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
if [[ "${1:-}" == "--test" ]]; then
  packages+=(mkvtoolnix python3 python3-venv)
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
