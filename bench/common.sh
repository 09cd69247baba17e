# Shared by the benchmark scripts (sourced, not run): logging and stopping processes by PID.
# The sourcing script sets BENCH_NAME (the log prefix) first.

log() { printf '[%s %s] %s\n' "${BENCH_NAME:-bench}" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Stops one process: SIGTERM, up to 5 s to exit, then SIGKILL.
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# start_edge DIR BIN ARGS...: starts BIN serve on 127.0.0.1 (listener and admin on port 0) with ARGS,
# its output in DIR, and waits for its ready line. Sets EDGE_PID and EDGE_ADDR; adds the PID to PIDS,
# which the sourcing script stops on exit. The environment (RUST_LOG, taskset via EDGE_WRAP) is the
# caller's.
start_edge() {
    local dir=$1 bin=$2
    shift 2
    # shellcheck disable=SC2086 # EDGE_WRAP is a command prefix such as "taskset -c 1", split on purpose.
    NO_COLOR=1 ${EDGE_WRAP:-} "$bin" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 "$@" \
        >"$dir/stdout" 2>"$dir/stderr" &
    EDGE_PID=$!
    PIDS+=("$EDGE_PID")
    EDGE_ADDR=""
    for _ in $(seq 200); do
        EDGE_ADDR=$(sed -n 's/^eddy-edge listening on \([^ ]*\) admin on .*/\1/p' "$dir/stdout")
        [[ -n $EDGE_ADDR ]] && return 0
        kill -0 "$EDGE_PID" 2>/dev/null || die "$bin exited: $(tail -n 3 "$dir/stderr")"
        sleep 0.05
    done
    die "$bin did not start"
}

# Makes WORK, a temporary folder holding play.m3u8 (a 1 KB object for small-hit runs, served by a
# directory origin), and PIDS; on exit every PID in PIDS is stopped and WORK removed.
small_hit_work() {
    WORK=$(mktemp -d)
    PIDS=()
    trap 'for pid in "${PIDS[@]}"; do stop_pid "$pid"; done; rm -rf "$WORK"' EXIT
    head -c 1024 /dev/urandom >"$WORK/play.m3u8"
}
