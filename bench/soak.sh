#!/usr/bin/env bash
# The soak at full length, in release: `tests/tests/soak.rs` for 60 s against target/release/eddy-edge
# (cache 32 MiB, short origin timeouts) and its own in-process origin. 32 clients loop over a seeded
# mix of hits, misses, ranges, HEADs, aborted downloads, no-store objects and origin faults (resets
# mid-body, stalls past first_byte_timeout, 503s), checking every byte. It prints the load average
# before and after, and the summary line: requests, req/s, errors, expected faults, p50/p99 latency of
# the healthy requests, peak RSS and the baseline it is measured from. It fails (exit 1) when the test
# fails: an error, a flight left behind, a panic, or peak RSS more than 32 + 64 MiB over the baseline.
#
#     bench/soak.sh
#     SECS=300 CLIENTS=64 SEED=2 bench/soak.sh
#
# Knobs (environment): SECS (default 60), CLIENTS (default 32), SEED (default 1), CARGO_TARGET_DIR.
# Nothing is pinned: the edge, the clients and the origin share the machine's cores. Everything runs
# on 127.0.0.1; the edge is started and stopped (by PID) by the test itself.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SECS=${SECS:-60}
CLIENTS=${CLIENTS:-32}
SEED=${SEED:-1}
WORK=$(mktemp -d /tmp/eddy-soak.XXXXXX)
PIDS=()

BENCH_NAME=soak
# shellcheck source=bench/common.sh
source "$BENCH_DIR/common.sh"

cleanup() {
    local status=$?
    local pid child
    for pid in "${PIDS[@]}"; do
        # The edge is the test's child: stop it by its PID first, since a test killed by a signal
        # does not get to stop it.
        for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do stop_pid "$child"; done
        stop_pid "$pid"
    done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$ROOT"
log "building eddy-edge and the soak test in release"
cargo build --release --quiet -p eddy-edge --bins
# The test finds eddy-edge next to its own executable: a release test build uses the release edge.
cargo test --release -p eddy-tests --test soak --no-run 2>"$WORK/build.log" || { cat "$WORK/build.log" >&2; die "build failed"; }
TEST_BIN=$(sed -n 's/^ *Executable tests\/soak\.rs (\(.*\))$/\1/p' "$WORK/build.log" | tail -n 1)
[[ -n $TEST_BIN ]] || die "could not find the soak test executable in: $(cat "$WORK/build.log")"
[[ $TEST_BIN = /* ]] || TEST_BIN=$ROOT/$TEST_BIN

log "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (plus uncommitted changes)')"
LOAD_BEFORE=$(uptime)
log "before: $LOAD_BEFORE"
log "running the soak: ${SECS} s, ${CLIENTS} clients, seed ${SEED}"
set +e
EDDY_SOAK_SECS=$SECS EDDY_SOAK_CLIENTS=$CLIENTS EDDY_SOAK_SEED=$SEED RUST_BACKTRACE=0 \
    "$TEST_BIN" --exact soak_mixed_load_keeps_errors_at_zero_and_memory_bounded --nocapture >"$WORK/run.log" 2>&1 &
PIDS+=("$!")
wait "$!"
STATUS=$?
set -e
LOAD_AFTER=$(uptime)
log "after: $LOAD_AFTER"

SUMMARY=$(grep '^soak:' "$WORK/run.log" || true)
if [[ $STATUS -ne 0 || -z $SUMMARY ]]; then
    cat "$WORK/run.log" >&2
    die "the soak failed (exit $STATUS)"
fi
echo "load average before: ${LOAD_BEFORE##*load average: }"
echo "load average after:  ${LOAD_AFTER##*load average: }"
echo "$SUMMARY"
