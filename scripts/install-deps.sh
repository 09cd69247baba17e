#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages that Eddy's build, tests, demo and benchmarks need, only those
# missing. Safe to run again: it does nothing when everything is there.
#
#     bash scripts/install-deps.sh          # install what is missing
#     bash scripts/install-deps.sh --list   # print the list, one package a line (read by tests/tests/deps.rs)
#
# Installs with --no-install-recommends: every package needed is named here or is a Depends of one
# named here, never a Recommends. tests/tests/deps.rs checks this against the code: every GStreamer
# element the packager, the player and the tests create, and every command the scripts and tests run,
# must come from a package below or from a dependency of one.
set -euo pipefail

packages=(
  # Build: a C toolchain for linking (and openssl-sys's build script, and ring's C and assembly for
  # rustls), pkg-config, and the headers of the system libraries the -sys crates link (GStreamer core,
  # app and pbutils, OpenSSL).
  gcc libc6-dev pkg-config libssl-dev ca-certificates
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  # GStreamer plugins. base: decodebin, videoconvert, audiotestsrc, appsrc... good: mp4mux, aacparse,
  # splitmuxsink, hlsdemux2... bad: mpegtsmux, h264parse, tsdemux... ugly: x264enc. libav: avenc_aac,
  # avdec_h264. x: the pango plugin (timeoverlay, textoverlay for the test pattern). tools: gst-launch-1.0
  # and gst-inspect-1.0 (the tests use both).
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x gstreamer1.0-tools
  # Tests: ffmpeg/ffprobe (keyframe checks, fallback content), openssl (decrypting segments), Redis for
  # the shared rate-limit store, procps (kill, pgrep), python3 (the benchmark's unit tests), PostgreSQL
  # (scripts/postgres.sh runs a throwaway server for the origin's metadata store; runuser, which it
  # needs as root, is in util-linux, Essential).
  ffmpeg openssl redis-server redis-tools procps python3 postgresql
  # python3's venv module, which Debian ships apart: scripts/moto.sh makes a virtualenv for moto, the
  # S3-compatible server of the object store tests.
  python3-venv
  # Benchmarks (bench/): nginx and wrk, plus curl and awk; git names the commit a soak run measured.
  nginx wrk curl mawk git
  # The origin's API examples (docs/origin-api.md), which a test runs as written: curl and jq.
  jq
)

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi
if [ $# -gt 0 ]; then
  echo "usage: bash scripts/install-deps.sh [--list]" >&2
  exit 2
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "Installing system packages: ${missing[*]}" >&2
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd=(sudo)
fi
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
