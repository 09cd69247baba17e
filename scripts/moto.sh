#!/usr/bin/env bash
# Installs moto, an S3-compatible server used by the origin's object store tests (origin/src/objects/),
# into a virtualenv under target/ on first use, and prints the absolute path of its moto_server
# executable. Does nothing but print the path when that version is already installed.
#
#     bash scripts/moto.sh     # → /…/target/moto-venv/bin/moto_server
#
# Everything else it prints goes to stderr, so that `$(bash scripts/moto.sh)` is only the path.
# Needs python3 with the venv module (Debian: python3-venv, in scripts/install-deps.sh) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the version the tests were checked against. The marker file names it, so that changing
# the pin reinstalls.
version=5.2.5
venv="$PWD/target/moto-venv"
marker="$venv/installed-moto-$version"

if [ ! -f "$marker" ] || [ ! -x "$venv/bin/moto_server" ]; then
  echo "Installing moto $version into $venv" >&2
  # A half-made virtualenv from an interrupted run is not trusted: start again.
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$version" >&2
  touch "$marker"
fi
echo "$venv/bin/moto_server"
