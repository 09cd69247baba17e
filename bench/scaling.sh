#!/usr/bin/env bash
# How eddy-edge scales across cores (issue 18, goal 6): the same small-hit load against `--workers 1`
# and `--workers 2`, in alternating rounds, with the access log on. Reports requests/s, the edge's CPU
# per request (all its threads, from /proc/PID/stat) and how that CPU was shared among its worker
# threads (/proc/PID/task/*/stat): the runtime's work-stealing spreads connections over workers, so the
# share of CPU is what tells whether the second worker carried its half.
#
#     bench/scaling.sh                 # the release build of this checkout
#
# Knobs (environment): ROUNDS (default 3), DURATION (s of load per run, default 8), CONNECTIONS (64).
# Nothing is pinned: wrk (-t2) shares the machine's cores with the edge, as it would with 2 workers on
# a 2-core machine; say so next to the figures. Needs wrk. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=scaling
. bench/common.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-64}
command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
cargo build --release --quiet -p eddy-edge
BIN="${CARGO_TARGET_DIR:-target}/release/eddy-edge"

small_hit_work

# Per-thread CPU ticks (user + system) of PID, one "tid ticks" line per thread. The thread's name is in
# parentheses and may hold spaces: fields are counted from the last ')'.
thread_ticks() {
    python3 - "$1" <<'PY'
import glob, sys
for path in glob.glob(f"/proc/{sys.argv[1]}/task/*/stat"):
    try:
        text = open(path).read()
    except OSError:
        continue
    fields = text[text.rindex(")") + 2:].split()
    print(text.split()[0], int(fields[11]) + int(fields[12]))
PY
}

# run_once WORKERS: prints "requests/s µs-of-CPU-per-request busiest-worker-share-% workers-busy"
run_once() {
    local workers=$1 dir
    dir=$(mktemp -d -p "$WORK")
    RUST_LOG=info start_edge "$dir" "$BIN" --origin "$WORK" --workers "$workers"
    local pid=$EDGE_PID addr=$EDGE_ADDR
    curl -s -o /dev/null "http://$addr/play.m3u8"
    local before after output
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    thread_ticks "$pid" >"$dir/threads.before"
    output=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" "http://$addr/play.m3u8")
    thread_ticks "$pid" >"$dir/threads.after"
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    stop_pid "$pid"
    local requests rps
    requests=$(awk '/requests in/ {print $1}' <<<"$output")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$output")
    python3 - "$dir/threads.before" "$dir/threads.after" "$rps" "$((after - before))" "$requests" <<'PY'
import os, sys
def read(path):
    return {line.split()[0]: int(line.split()[1]) for line in open(path) if line.strip()}
before, after = read(sys.argv[1]), read(sys.argv[2])
used = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
total = sum(used) or 1
# Threads that did at least 5 % of the work: the workers that carried the load.
busy = [u for u in used if u * 20 >= total]
rps, ticks, requests = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cpu_us = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(1, requests)
print(f"{rps:.0f} {cpu_us:.2f} {100 * used[0] / total:.0f} {len(busy)}")
PY
    rm -rf "$dir"
}

log "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
results=$WORK/results
for round in $(seq "$ROUNDS"); do
    for workers in 1 2; do
        read -r rps cpu busiest busy < <(run_once "$workers")
        log "round $round --workers $workers: $rps requests/s, $cpu µs CPU per request, busiest thread $busiest % of the edge's CPU, $busy threads busy"
        echo "$workers $rps $cpu $busiest $busy" >>"$results"
    done
done
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "median (min–max) of $ROUNDS rounds, ${DURATION} s each, 1 KB hits, wrk -t2 -c$CONNECTIONS sharing the cores, access log on"
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    workers, *values = line.split()
    rows.setdefault(workers, []).append([float(v) for v in values])
def cell(values, digits):
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"
print(f"{'workers':<8} {'requests/s':>24} {'CPU µs/request':>20} {'busiest thread %':>18} {'threads busy':>13}")
for workers, runs in rows.items():
    columns = list(zip(*runs))
    print(f"{workers:<8} {cell(columns[0], 0):>24} {cell(columns[1], 2):>20} {cell(columns[2], 0):>18} {cell(columns[3], 0):>13}")
one, two = rows.get("1"), rows.get("2")
if one and two:
    ratio = statistics.median(r[0] for r in two) / statistics.median(r[0] for r in one)
    cpu = statistics.median(r[1] for r in two) / statistics.median(r[1] for r in one)
    print(f"\n--workers 2 / --workers 1: requests/s × {ratio:.2f}, CPU per request × {cpu:.2f}")
PY
