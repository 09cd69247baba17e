#!/usr/bin/env bash
# Every check and test of the project: formatting, lints, unit tests and the end-to-end tests that start
# the real binaries. Installs the system packages it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests start the real binaries: build them first.
cargo build --workspace --bins
# First, whether install-deps.sh installs everything the code and scripts use: fails naming the
# GStreamer element or command and the Debian package missing from its list (tests/tests/deps.rs).
cargo test -p eddy-tests --test deps
# The origin's object store tests run against a real S3-compatible server, moto, which moto.sh installs
# in a virtualenv on first use; without it those tests say they were skipped.
if moto_server=$(bash scripts/moto.sh); then
  export EDDY_TEST_MOTO_SERVER="$moto_server"
else
  echo "warning: scripts/moto.sh could not install moto: the S3 object store tests will be skipped" >&2
fi
# A throwaway PostgreSQL for the origin's metadata store tests (origin/src/meta), which run on SQLite
# always and on PostgreSQL when EDDY_TEST_POSTGRES_URL is set.
pg_dir=$(mktemp -d)
trap 'bash scripts/postgres.sh stop "$pg_dir"; rm -rf "$pg_dir"' EXIT
if pg_url=$(bash scripts/postgres.sh start "$pg_dir"); then
  export EDDY_TEST_POSTGRES_URL=$pg_url
else
  echo "warning: scripts/postgres.sh could not start PostgreSQL: the metadata store's PostgreSQL tests will skip" >&2
fi
cargo test --workspace
# The benchmark's own logic (percentiles, workload model, Belady) is tested too.
python3 -m unittest bench/test_tools.py
