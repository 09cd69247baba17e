#!/usr/bin/env bash
# Eddy edge vs nginx proxy_cache, side by side, on this machine. One command:
#
#     bench/run.sh                  # all scenarios (1-5), ~6 minutes on 2 cores
#     SCENARIOS="1 2" bench/run.sh  # a subset
#
# Knobs (environment): DURATION (s of load per wrk run, default 8), ROUNDS (wrk runs per server in
# scenarios 1 and 2, alternating the order; medians are shown; default 3), SERVER_CORE (1), LOAD_CORE (0),
# ACCESS_LOG (on|off: both servers log every request to a file, or neither; default on),
# NGINX_SENDFILE (on|off, default on: off makes nginx copy bodies through user space as eddy does),
# NGINX_CACHE_TMPFS (1|0, default 1: nginx's cache files in /dev/shm rather than under /tmp),
# QUIET_WAIT (s to wait for the 1-minute load average to fall to 0.5 before measuring, default 180; the
# table says "NOT a run of record" when it did not), CARGO_TARGET_DIR (where the release build goes), EDGE_BIN (use this binary, no build), KEEP=1 (keep the work dir), RESULTS (file to which the
# final markdown table is also written).
#
# Installs nginx and wrk with apt-get when missing, builds eddy-edge in release, starts one origin
# (bench/origin.py), then for each scenario runs eddy-edge and nginx one after the other against it, the
# server pinned to SERVER_CORE and the load generator to LOAD_CORE, and prints a table with both figures
# and their ratio. Every process it starts is stopped on exit, also on failure.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
SERVER_CORE=${SERVER_CORE:-1}
LOAD_CORE=${LOAD_CORE:-0}
ACCESS_LOG=${ACCESS_LOG:-on}
SCENARIOS=${SCENARIOS:-1 2 3 4 5}
WORK=$(mktemp -d /tmp/eddy-bench.XXXXXX)
RESULTS_JSONL=$WORK/results.jsonl
PIDS=()

BENCH_NAME=bench
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
    [[ ${CACHE_ROOT:-$WORK} == "$WORK" ]] || rm -rf "$CACHE_ROOT"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
    local gone=$1 kept=()
    for pid in "${PIDS[@]}"; do [[ $pid == "$gone" ]] || kept+=("$pid"); done
    PIDS=("${kept[@]}")
}

# Waits until FILE contains a line matching REGEX (the server's ready line), or fails after 30 s.
wait_for_line() {
    local file=$1 regex=$2 pid=$3 deadline=$((SECONDS + 30))
    until grep -qE "$regex" "$file" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before getting ready (see $file)"
        ((SECONDS < deadline)) || die "no ready line in $file after 30 s"
        sleep 0.05
    done
}

# Waits until a TCP port accepts connections (nginx prints no ready line).
wait_for_port() {
    local port=$1 pid=$2 deadline=$((SECONDS + 30))
    until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before listening on $port"
        ((SECONDS < deadline)) || die "nothing listening on $port after 30 s"
        sleep 0.05
    done
}

free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

pin() { # pin CORE command... (foreground use; background processes use the ON_*_CORE prefixes so
    # that $! is the server's own PID, not a subshell's)
    local core=$1
    shift
    if [[ $PINNING == 1 ]]; then taskset -c "$core" "$@"; else "$@"; fi
}

# ------------------------------------------------------------------------------------------ setup

install_missing() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v python3 >/dev/null || missing+=(python3)
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_missing
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
PINNING=1
if (($(nproc) < 2)); then
    log "fewer than 2 cores: not pinning server and load generator"
    PINNING=0
fi
ON_SERVER_CORE=()
ON_LOAD_CORE=()
if [[ $PINNING == 1 ]]; then
    ON_SERVER_CORE=(taskset -c "$SERVER_CORE")
    ON_LOAD_CORE=(taskset -c "$LOAD_CORE")
fi
ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true
# nginx's cache lives in files: keep them in memory (tmpfs) like eddy's, so that neither waits on a disk.
CACHE_ROOT=$WORK
if [[ ${NGINX_CACHE_TMPFS:-1} == 1 && -d /dev/shm && -w /dev/shm ]]; then
    CACHE_ROOT=$(mktemp -d /dev/shm/eddy-bench.XXXXXX)
fi

if [[ -z ${EDGE_BIN:-} ]]; then
    log "building eddy-edge (release) into $CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release -q -p eddy-edge)
    EDGE_BIN=$CARGO_TARGET_DIR/release/eddy-edge
fi
[[ -x $EDGE_BIN ]] || die "no binary at $EDGE_BIN"

log "starting the origin"
ORIGIN_LOG=$WORK/origin.log
: >"$ORIGIN_LOG"
"${ON_LOAD_CORE[@]}" python3 "$BENCH_DIR/origin.py" --log "$ORIGIN_LOG" >"$WORK/origin.out" 2>"$WORK/origin.err" &
ORIGIN_PID=$!
PIDS+=("$ORIGIN_PID")
wait_for_line "$WORK/origin.out" 'origin listening on' "$ORIGIN_PID"
ORIGIN=$(sed -n 's/^origin listening on //p' "$WORK/origin.out")
log "origin on $ORIGIN"

# ------------------------------------------------------------------------------------------ servers

SERVER_PID=
SERVER_ADDR=
SERVER_ADMIN=

# start_eddy NAME CACHE_SIZE EVICTION
start_eddy() {
    local name=$1 size=$2 eviction=$3 dir=$WORK/$1
    mkdir -p "$dir"
    printf '[cache]\neviction = "%s"\n' "$eviction" >"$dir/edge.toml"
    local filter=info
    [[ $ACCESS_LOG == on ]] || filter=warn
    NO_COLOR=1 RUST_LOG=$filter "${ON_SERVER_CORE[@]}" "$EDGE_BIN" serve --config "$dir/edge.toml" \
        --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --origin "http://$ORIGIN" \
        --cache-size "$size" --workers 1 >"$dir/stdout" 2>"$dir/stderr" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_for_line "$dir/stdout" 'eddy-edge listening on' "$SERVER_PID"
    SERVER_ADDR=$(sed -n 's/^eddy-edge listening on \([^ ]*\) admin on .*/\1/p' "$dir/stdout")
    SERVER_ADMIN=$(sed -n 's/^eddy-edge listening on .* admin on \(.*\)/\1/p' "$dir/stdout")
}

# start_nginx NAME CACHE_SIZE: proxy_cache with the edge's defaults where nginx has an equivalent.
start_nginx() {
    local name=$1 size=$2 dir=$WORK/$1 cache=$CACHE_ROOT/$1
    mkdir -p "$dir/temp" "$cache"
    local port user_line="" access="access_log off;"
    port=$(free_port)
    [[ $(id -u) == 0 ]] && user_line="user root;"
    [[ $ACCESS_LOG == on ]] && access="access_log $dir/access.log;"
    cat >"$dir/nginx.conf" <<EOF
$user_line
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
    $access
    sendfile ${NGINX_SENDFILE:-on};
    # tcp_nopush (TCP_CORK with sendfile) held the tail of ~20 % of responses for a delayed ACK (~40 ms
    # each) on this loopback: off is nginx's better setting here.
    tcp_nopush off;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path $dir/temp/client;
    proxy_temp_path $dir/temp/proxy;
    fastcgi_temp_path $dir/temp/fastcgi;
    uwsgi_temp_path $dir/temp/uwsgi;
    scgi_temp_path $dir/temp/scgi;
    proxy_cache_path $cache levels=1:2 keys_zone=edge:64m max_size=$size inactive=1d use_temp_path=off;
    upstream origin {
        server $ORIGIN;
        keepalive 256;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache edge;
            proxy_cache_key \$host\$request_uri;
            proxy_cache_valid 404 410 10s;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 30s;
            proxy_cache_lock_age 30s;
            proxy_cache_revalidate on;
            proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;
            add_header X-Cache \$upstream_cache_status;
        }
    }
}
EOF
    "${ON_SERVER_CORE[@]}" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout" 2>"$dir/stderr" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    wait_for_port "$port" "$SERVER_PID"
    SERVER_ADDR=127.0.0.1:$port
    SERVER_ADMIN=
}

stop_server() {
    stop_pid "$SERVER_PID"
    forget_pid "$SERVER_PID"
    SERVER_PID=
}

# start_server eddy|nginx NAME CACHE_SIZE [EVICTION]
start_server() {
    case $1 in
    eddy) start_eddy "$2" "$3" "${4:-s3fifo}" ;;
    nginx) start_nginx "$2" "$3" ;;
    esac
}

record() { # record SCENARIO SERVER JSON
    printf '{"scenario": %s, "server": "%s", "figures": %s}\n' "$1" "$2" "$3" >>"$RESULTS_JSONL"
    log "scenario $1 $2: $3"
}

warm() { # warm ADDR PATH...: fetch each path twice (miss, then hit)
    local addr=$1
    shift
    for path in "$@"; do
        for _ in 1 2; do
            curl -fsS -o /dev/null "http://$addr$path" || die "warming $path on $addr failed"
        done
    done
}

# CPU time (clock ticks) used so far by the server and its child processes (nginx's workers): on a
# machine shared with other work, CPU per request is steadier than requests/s.
server_ticks() {
    local total=0 pid
    for pid in "$SERVER_PID" $(pgrep -P "$SERVER_PID" || true); do
        [[ -r /proc/$pid/stat ]] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

run_wrk() { # run_wrk ADDR CONNECTIONS PATH...
    local addr=$1 connections=$2
    shift 2
    local out before after log_offset origin
    log_offset=$(stat -c %s "$ORIGIN_LOG")
    before=$(server_ticks)
    out=$(pin "$LOAD_CORE" wrk -t1 -c"$connections" -d"${DURATION}s" --timeout 10s -s "$BENCH_DIR/report.lua" \
        "http://$addr" -- "$@")
    after=$(server_ticks)
    origin=$("${TOOLS[@]}" origin-bytes "$ORIGIN_LOG" "$log_offset")
    python3 -c '
import json, os, sys
figures = json.loads(sys.argv[1])
ticks = int(sys.argv[3]) - int(sys.argv[2])
figures["server_cpu_us_per_request"] = ticks * 1e6 / os.sysconf("SC_CLK_TCK") / max(1, figures["requests"])
figures["origin_requests_under_load"] = json.loads(sys.argv[4])["requests"]
print(json.dumps(figures))' "$(sed -n 's/^WRKJSON //p' <<<"$out")" "$before" "$after" "$origin"
}

TOOLS=(python3 "$BENCH_DIR/tools.py")
RUN_ID=$(date +%s)

# ------------------------------------------------------------------------------------------ scenarios

# The throughput scenarios run ROUNDS times, alternating which server goes first; the table shows each
# figure's median over the rounds (one run of either server is at the mercy of whatever else runs).
server_order() { # server_order ROUND
    if (($1 % 2)); then echo "nginx eddy"; else echo "eddy nginx"; fi
}

scenario_1() {
    local path=/o/1024/0/live/playlist.m3u8
    for round in $(seq 0 $((ROUNDS - 1))); do
        for server in $(server_order "$round"); do
            start_server "$server" "s1-$server-$round" 268435456
            warm "$SERVER_ADDR" "$path"
            record 1 "$server" "$(run_wrk "$SERVER_ADDR" 64 "$path")"
            stop_server
        done
    done
}

scenario_2() {
    local paths=()
    for i in $(seq 0 15); do paths+=("/o/1048576/0/seg/s$i.ts"); done
    for round in $(seq 0 $((ROUNDS - 1))); do
        for server in $(server_order "$round"); do
            start_server "$server" "s2-$server-$round" 268435456
            warm "$SERVER_ADDR" "${paths[@]}"
            record 2 "$server" "$(run_wrk "$SERVER_ADDR" 16 "${paths[@]}")"
            stop_server
        done
    done
}

scenario_3() {
    for server in eddy nginx; do
        local path=/o/2097152/200/flash/$server-$RUN_ID.ts
        start_server "$server" "s3-$server" 268435456
        local crowd origin
        crowd=$(pin "$LOAD_CORE" "${TOOLS[@]}" flash "$SERVER_ADDR" "$path" --clients 500) || log "flash crowd on $server incomplete"
        origin=$("${TOOLS[@]}" origin-bytes "$ORIGIN_LOG" 0 --contains "$path")
        record 3 "$server" "$(python3 -c 'import json,sys; c=json.loads(sys.argv[1]); o=json.loads(sys.argv[2]); c["origin_requests"]=o["requests"]; print(json.dumps(c))' "$crowd" "$origin")"
        stop_server
    done
}

scenario_4() {
    for server in eddy nginx; do
        start_server "$server" "s4-$server" 268435456
        record 4 "$server" "$(pin "$LOAD_CORE" "${TOOLS[@]}" ttfb "$SERVER_ADDR" "$ORIGIN" --requests 300 --tag "$server-$RUN_ID")"
        stop_server
    done
}

# replay_through VARIANT SEQUENCE: one replay against the running server; records byte hit ratio from the
# origin's log (and, for nginx, how many bytes its cache directory really held: nginx enforces max_size
# from its cache manager process, which may sleep up to 10 s while the cache overshoots).
replay_through() {
    local variant=$1 sequence=$2 offset replayed origin stats=null sampler_pid= sizes=null
    offset=$(stat -c %s "$ORIGIN_LOG")
    if [[ $variant == nginx ]]; then
        python3 "$BENCH_DIR/tools.py" watch-size "$CACHE_ROOT/s5-nginx" "$WORK/nginx-cache-sizes" &
        sampler_pid=$!
        PIDS+=("$sampler_pid")
    fi
    replayed=$(pin "$LOAD_CORE" "${TOOLS[@]}" replay "$SERVER_ADDR" "$sequence") || die "replay through $variant failed: $replayed"
    if [[ -n $sampler_pid ]]; then
        stop_pid "$sampler_pid"
        forget_pid "$sampler_pid"
        sizes=$("${TOOLS[@]}" summarize-sizes "$WORK/nginx-cache-sizes")
    fi
    origin=$("${TOOLS[@]}" origin-bytes "$ORIGIN_LOG" "$offset" --contains /vod/)
    [[ -n $SERVER_ADMIN ]] && stats=$(curl -fsS "http://$SERVER_ADMIN/stats" || echo null)
    record 5 "$variant" "$(python3 -c '
import json, sys
replayed, origin, stats, sizes = (json.loads(a) for a in sys.argv[1:5])
figures = {"requests": replayed["requests"], "requested_bytes": replayed["bytes"],
           "origin_requests": origin["requests"], "origin_bytes": origin["bytes"],
           "byte_hit_ratio": 1 - origin["bytes"] / replayed["bytes"], "seconds": replayed["seconds"],
           "capacity": int(sys.argv[5])}
if stats:
    figures["edge_reported_byte_hit_ratio"] = stats.get("byte_hit_ratio")
if sizes:
    figures.update(sizes)
print(json.dumps(figures))' "$replayed" "$origin" "$stats" "$sizes" "$3")"
}

scenario_5() {
    local sequence=$WORK/vod.txt
    local described capacity held
    described=$("${TOOLS[@]}" vod-gen --seed 7 --sessions 1000 --out "$sequence")
    capacity=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["catalogue_bytes"] // 10)' "$described")
    log "VOD workload: $described; cache $capacity bytes"
    for variant in eddy-s3fifo eddy-tinylfu eddy-lru nginx; do
        case $variant in
        eddy-s3fifo) start_server eddy "s5-$variant" "$capacity" s3fifo ;;
        eddy-tinylfu) start_server eddy "s5-$variant" "$capacity" tinylfu ;;
        eddy-lru) start_server eddy "s5-$variant" "$capacity" lru ;;
        nginx) start_server nginx "s5-$variant" "$capacity" ;;
        esac
        replay_through "$variant" "$sequence" "$capacity"
        stop_server
    done
    record 5 belady "$("${TOOLS[@]}" belady "$sequence" --capacity "$capacity")"
    # The same comparison at the capacity nginx actually used (its mean cache size during the replay).
    held=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["scenario"] == 5 and r["server"] == "nginx":
        print(int(r["figures"].get("cache_mean_bytes", 0)))' "$RESULTS_JSONL")
    if ((held > capacity)); then
        start_server eddy "s5-eddy-s3fifo-held" "$held" s3fifo
        replay_through eddy-s3fifo-at-nginx-size "$sequence" "$held"
        stop_server
        record 5 belady-at-nginx-size "$("${TOOLS[@]}" belady "$sequence" --capacity "$held")"
    fi
}

# A run of record needs a quiet machine (bench/tools.py QUIET_LOAD: a 1-minute load average of at most
# 0.5 before the run). The release build just above raises it, so wait for it to fall, up to QUIET_WAIT
# seconds (default 180); the table then says whether this was a run of record.
quiet_wait=${QUIET_WAIT:-180}
deadline=$((SECONDS + quiet_wait))
until python3 -c 'import sys; sys.exit(0 if float(open("/proc/loadavg").read().split()[0]) <= 0.5 else 1)'; do
    if ((SECONDS >= deadline)); then
        log "the 1-minute load average is still $(cut -d' ' -f1 /proc/loadavg) after ${quiet_wait} s: this will NOT be a run of record"
        break
    fi
    sleep 5
done
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "work dir $WORK; load average before: $LOAD_BEFORE"
for scenario in $SCENARIOS; do
    declare -F "scenario_$scenario" >/dev/null || die "no scenario $scenario (there are 1 2 3 4 5)"
    log "scenario $scenario"
    "scenario_$scenario"
done

TABLE=$("${TOOLS[@]}" table "$RESULTS_JSONL" --load "$(cut -d' ' -f1-3 /proc/loadavg)" --load-before "$LOAD_BEFORE" \
    --duration "$DURATION x $ROUNDS rounds" \
    --access-log "$ACCESS_LOG" --nginx-sendfile "${NGINX_SENDFILE:-on}")
echo "$TABLE"
[[ -n ${RESULTS:-} ]] && echo "$TABLE" >"$RESULTS"
exit 0
