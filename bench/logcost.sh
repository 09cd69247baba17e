#!/usr/bin/env bash
# What the access log costs eddy-edge on small hits: requests/s and edge CPU per request, with the
# access log off (RUST_LOG=warn) and on (RUST_LOG=info), for one or two builds of the edge, in
# alternating rounds.
#
#     bench/logcost.sh                       # the release build of this checkout
#     bench/logcost.sh OLD_BIN NEW_BIN       # two builds side by side (for example before/after a change)
#
# Knobs (environment): ROUNDS (default 3), DURATION (s of load per run, default 8), SERVER_CORE (1),
# LOAD_CORE (0). The edge serves a 1 KB file from a directory origin with one worker, pinned to
# SERVER_CORE; wrk (-t1 -c64) runs on LOAD_CORE. CPU time comes from /proc/PID/stat (all threads).
# Prints the medians per binary and log level, then the log's cost (on against off) worked out within
# each round and summarised as median and quartiles, which is steadier than a difference of medians.
# Needs wrk and taskset. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_NAME=logcost
. bench/common.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
SERVER_CORE=${SERVER_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
command -v taskset >/dev/null || die "taskset is not installed (util-linux)"

if [[ $# -eq 0 ]]; then
    cargo build --release --quiet -p eddy-edge
    set -- "${CARGO_TARGET_DIR:-target}/release/eddy-edge"
fi
for bin in "$@"; do [[ -x $bin ]] || die "$bin is not an executable"; done

small_hit_work

# run_once BIN RUST_LOG: prints "requests/s µs-of-CPU-per-request log-lines"
run_once() {
    local bin=$1 filter=$2 dir
    dir=$(mktemp -d -p "$WORK")
    RUST_LOG=$filter EDGE_WRAP="taskset -c $SERVER_CORE" start_edge "$dir" "$bin" --origin "$WORK" --workers 1
    local pid=$EDGE_PID addr=$EDGE_ADDR
    curl -s -o /dev/null "http://$addr/play.m3u8"
    local before after output
    before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    output=$(taskset -c "$LOAD_CORE" wrk -t1 -c64 -d"${DURATION}s" "http://$addr/play.m3u8")
    after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
    stop_pid "$pid"
    local requests rps
    requests=$(awk '/requests in/ {print $1}' <<<"$output")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$output")
    local lines
    lines=$(wc -l <"$dir/stderr")
    # A run with the log on writes ~20 MB/s: keep no run's log past its count (9 rounds kept 2.5 GB).
    rm -rf "$dir"
    python3 -c "print(f'{$rps:.0f} {($after - $before) / $(getconf CLK_TCK) * 1e6 / $requests:.2f} $lines')"
}

results=$WORK/results
# Even rounds run the builds and the log levels in the reverse order: on this machine the same build
# given twice ran faster in the second slot of a round in 5 rounds of 6 (1.19 x requests/s, median),
# so a fixed order would credit the second build with the machine's warm-up.
for round in $(seq "$ROUNDS"); do
    order=("$@") filters=(warn info)
    if ((round % 2 == 0)); then
        order=() filters=(info warn)
        for ((i = $#; i >= 1; i--)); do order+=("${!i}"); done
    fi
    for bin in "${order[@]}"; do
        for filter in "${filters[@]}"; do
            read -r rps cpu lines < <(run_once "$bin" "$filter")
            log "round $round $bin RUST_LOG=$filter: $rps requests/s, $cpu µs CPU per request, $lines log lines"
            echo "$bin $filter $rps $cpu" >>"$results"
        done
    done
done

echo "median of $ROUNDS rounds, ${DURATION} s each, 1 KB hits, wrk -t1 -c64, one edge worker"
printf '%-40s %-10s %12s %16s\n' binary access-log requests/s "CPU µs/request"
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    binary, level, rps, cpu = line.split()
    rows.setdefault((binary, level), []).append((float(rps), float(cpu)))
for (binary, level), runs in rows.items():
    rps = statistics.median(r for r, _ in runs)
    cpu = statistics.median(c for _, c in runs)
    print(f"{binary:<40} {'on' if level == 'info' else 'off':<10} {rps:>12.0f} {cpu:>16.2f}")

# The log's cost from each round's off and on runs, taken seconds apart: the machine's drift between
# rounds (±10 % here) cancels out of these pairs, not out of the medians above.
def spread(values, digits):
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{median:.{digits}f} ({q1:.{digits}f} to {q3:.{digits}f})"

print("\nthe log's cost, from each round's pair: median (quartiles)")
print(f"{'binary':<40} {'% of requests/s':>24} {'CPU µs/request':>24}")
for binary in dict.fromkeys(b for b, _ in rows):
    pairs = list(zip(rows[(binary, "warn")], rows[(binary, "info")]))
    lost = [100 * (1 - on[0] / off[0]) for off, on in pairs]
    extra = [on[1] - off[1] for off, on in pairs]
    print(f"{binary:<40} {spread(lost, 1):>24} {spread(extra, 2):>24}")
PY
