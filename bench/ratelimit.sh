#!/usr/bin/env bash
# What rate limiting costs on the edge's fastest path: requests/s of cache hits with rate limiting off,
# with the local store, and with a Redis store, measured back to back in one run, plus each ratio to "off".
#
#     bench/ratelimit.sh
#
# Knobs (environment): DURATION (s of load per wrk run, default 10), CONNECTIONS (wrk -c, default 50),
# ROUNDS (repeat off/local/redis this many times, interleaved, and report the best of each; default 2),
# OBJECT_SIZE (bytes of the cached object, default 10240), CLIENTS (distinct X-Api-Key values the load
# spreads over, default 1000), SERVER_CORE (1) and LOAD_CORE (0) for taskset, ALGORITHM (token_bucket),
# ACCESS_LOG (on|off, default off), CARGO_TARGET_DIR (where the release build goes), EDGE_BIN (use this
# binary, no build), KEEP=1 (keep the work dir).
#
# The limit is set far above the offered load so every request is allowed: this measures the cost of a
# decision, not of refusing. The edge runs with one worker pinned to SERVER_CORE, wrk to LOAD_CORE;
# redis-server is not pinned. Every process it starts is stopped on exit, also on failure.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
ROUNDS=${ROUNDS:-2}
OBJECT_SIZE=${OBJECT_SIZE:-10240}
CLIENTS=${CLIENTS:-1000}
SERVER_CORE=${SERVER_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
ALGORITHM=${ALGORITHM:-token_bucket}
ACCESS_LOG=${ACCESS_LOG:-off}
WORK=$(mktemp -d /tmp/eddy-ratelimit-bench.XXXXXX)
PIDS=()

BENCH_NAME=ratelimit-bench
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ ${KEEP:-0} == 1 || $status != 0 ]]; then
        log "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

for tool in wrk redis-server redis-cli taskset; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install wrk redis-server util-linux)"
done

if [[ -n ${EDGE_BIN:-} ]]; then
    EDGE=$EDGE_BIN
else
    log "building eddy-edge (release) in $CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release -p eddy-edge --bin eddy-edge >&2)
    EDGE=$CARGO_TARGET_DIR/release/eddy-edge
fi
[[ -x $EDGE ]] || die "no eddy-edge binary at $EDGE"

# Origin: one object, cached for a day.
mkdir -p "$WORK/origin"
head -c "$OBJECT_SIZE" /dev/urandom >"$WORK/origin/seg.ts"

# Redis on a free port.
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    [[ $(redis-cli -p "$REDIS_PORT" PING 2>/dev/null) == PONG ]] && break
    sleep 0.05
done
[[ $(redis-cli -p "$REDIS_PORT" PING 2>/dev/null) == PONG ]] || die "redis-server did not start"

# The load spreads over CLIENTS identities, as many viewers would.
cat >"$WORK/clients.lua" <<EOF
local clients = $CLIENTS
math.randomseed(42)
request = function()
    return wrk.format("GET", "/seg.ts", { ["X-Api-Key"] = "viewer-" .. math.random(1, clients) })
end
EOF

config_for() {
    local mode=$1 file=$WORK/$1.toml
    case $mode in
        off) printf '[rate_limit]\nenabled = false\n' >"$file" ;;
        local) printf '[rate_limit]\nenabled = true\nalgorithm = "%s"\nrate = "1000000000/s"\nstore = "local"\nidentify = ["x-api-key", "peer"]\n' "$ALGORITHM" >"$file" ;;
        redis) printf '[rate_limit]\nenabled = true\nalgorithm = "%s"\nrate = "1000000000/s"\nstore = "redis://127.0.0.1:%s"\non_store_error = "open"\nidentify = ["x-api-key", "peer"]\n' "$ALGORITHM" "$REDIS_PORT" >"$file" ;;
    esac
    echo "$file"
}

# Runs one mode; prints its requests/s.
run_mode() {
    local mode=$1 config out addr pid rps
    config=$(config_for "$mode")
    out=$WORK/$mode.out
    local filter=warn
    [[ $ACCESS_LOG == on ]] && filter=info
    RUST_LOG=$filter taskset -c "$SERVER_CORE" "$EDGE" serve --config "$config" --listen 127.0.0.1:0 \
        --admin-listen 127.0.0.1:0 --origin "$WORK/origin" --workers 1 >"$out" 2>"$WORK/$mode.err" &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 200); do
        grep -q "listening on" "$out" 2>/dev/null && break
        sleep 0.05
    done
    addr=$(sed -n 's/.*listening on \([0-9.:]*\) admin.*/\1/p' "$out")
    [[ -n $addr ]] || die "eddy-edge ($mode) did not start: $(cat "$WORK/$mode.err")"
    curl -sf -o /dev/null "http://$addr/seg.ts" || die "warm-up request failed ($mode)"
    rps=$(taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$WORK/clients.lua" "http://$addr" \
        | awk '/^Requests\/sec:/ {print $2}')
    local admin
    admin=$(sed -n 's/.*admin on \([0-9.:]*\).*/\1/p' "$out")
    local errors
    errors=$(curl -sf "http://$admin/stats" | python3 -c 'import json,sys; s=json.load(sys.stdin)["rate_limit"]; print(s["store_errors"], s["limited"])')
    stop_pid "$pid"
    log "$mode: $rps requests/s (rate-limit store errors, limited: $errors)"
    echo "$rps"
}

declare -A BEST=([off]=0 [local]=0 [redis]=0)
for round in $(seq "$ROUNDS"); do
    for mode in off local redis; do
        log "round $round: $mode"
        rps=$(run_mode "$mode")
        if python3 -c "import sys; sys.exit(0 if float('$rps') > float('${BEST[$mode]}') else 1)"; then
            BEST[$mode]=$rps
        fi
    done
done

echo
echo "Cache hits of a ${OBJECT_SIZE}-byte object, ${CLIENTS} client identities, wrk -c${CONNECTIONS} ${DURATION}s, edge 1 worker on core ${SERVER_CORE}, wrk on core ${LOAD_CORE}, algorithm ${ALGORITHM}, access log ${ACCESS_LOG}, best of ${ROUNDS} interleaved rounds:"
echo
echo "| rate limiting | requests/s | vs off |"
echo "|---|---:|---:|"
for mode in off local redis; do
    python3 -c "print('| $mode | %.0f | %.3f |' % (float('${BEST[$mode]}'), float('${BEST[$mode]}') / float('${BEST[off]}')))"
done
