#!/usr/bin/env bash
# The whole story on built-in defaults: package a test pattern into an HLS ladder (once), serve it
# through eddy-edge, squeeze it through a link that drops and recovers (eddy-netsim), and play it with
# eddy-play, which steps down and back up; then the player's QoE summary and the edge's hit ratio.
# Last, the origin: upload a clip with eddy-upload to eddy-origin, which packages it, and play it
# through an edge that checks the origin's signed playback URLs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --bins

bin=target/release
out=demo-out
content=$out/content-60s
mkdir -p "$out"

if [ ! -f "$content/master.m3u8" ]; then
  echo "== Packaging a 60 s test pattern into a 3-rung ladder (once) =="
  "$bin/eddy-package" --test-pattern 60s --out "$content" --ladder 240p:300k,360p:800k,480p:1500k --segment-duration 2
fi

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# Starts a server in the background, remembers its PID for the cleanup, and sets `server_addr` to the
# address after "listening on " in its ready line (every Eddy server prints one on stdout when ready).
# Not called in $(...): a subshell would lose the PID.
start_server() {
  local log=$1; shift
  "$@" >"$log.stdout" 2>>"$log" &
  pids+=($!)
  local line=""
  for _ in $(seq 400); do
    line=$(grep -m1 "listening on" "$log.stdout" 2>/dev/null || true)
    [ -n "$line" ] && break
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "$* failed to start; see $log" >&2; exit 1; }
    sleep 0.05
  done
  [ -n "$line" ] || { echo "$* did not become ready; see $log" >&2; exit 1; }
  server_addr=$(echo "$line" | sed -E 's/.*listening on ([0-9.:]+).*/\1/')
}

echo "== Starting eddy-edge in front of $content =="
start_server "$out/edge.log" "$bin/eddy-edge" serve --origin "$content" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
edge_addr=$server_addr
admin_addr=$(grep -m1 "admin on" "$out/edge.log.stdout" | sed -E 's/.*admin on ([0-9.:]+).*/\1/')
echo "   edge on http://$edge_addr (admin on http://$admin_addr)"

echo "== Starting eddy-netsim: 4 Mbit/s, dropping to 600 kbit/s at 12 s, back to 4 Mbit/s at 26 s =="
start_server "$out/netsim.log" "$bin/eddy-netsim" --listen 127.0.0.1:0 --upstream "http://$edge_addr" \
  --pattern 4M@0s,600k@12s,4M@26s --latency 20 --log "$out/netsim.jsonl"
link_addr=$server_addr
echo "   shaped link on http://$link_addr"

headless=()
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then headless=(--headless); fi

echo "== Playing http://$link_addr/master.m3u8 =="
# A short forward buffer (8 s) so that the drop shows as switches rather than being absorbed.
"$bin/eddy-play" "http://$link_addr/master.m3u8" "${headless[@]}" --buffer 8 \
  --report "$out/report.json" --events "$out/events.jsonl" --plot "$out/timeline.svg"

echo
echo "== A second viewer, straight from the edge (now warm) =="
"$bin/eddy-play" "http://$edge_addr/master.m3u8" --headless --quiet --duration 20 --report "$out/report-2.json" >/dev/null

echo "== Edge figures =="
"$bin/eddy-edge" stats --admin "http://$admin_addr"

echo
echo "== The origin: upload a 20 s clip, let it be packaged, play it through an edge that checks tokens =="
clip=$out/clip-20s.mp4
if [ ! -f "$clip" ]; then
  ffmpeg -v error -f lavfi -i testsrc2=size=640x360:rate=25 -f lavfi -i sine=frequency=440 -t 20 \
    -c:v libx264 -preset veryfast -pix_fmt yuv420p -c:a aac -shortest "$clip"
fi
# A fresh origin each run: metadata in SQLite and objects in a folder, both under --data.
rm -rf "$out/origin-data"
start_server "$out/origin.log" "$bin/eddy-origin" serve --data "$out/origin-data" --listen 127.0.0.1:0
origin_addr=$server_addr
token=$("$bin/eddy-origin" user add demo --data "$out/origin-data" 2>/dev/null)
# The edge checks the origin's playback tokens with the key the origin made in its data folder.
cat >"$out/edge-signed.toml" <<EOF_EDGE
[auth]
signed_urls = { key_file = "$out/origin-data/playback.key", param = "token", prefixes = ["/videos/"] }
EOF_EDGE
start_server "$out/edge-signed.log" "$bin/eddy-edge" serve --config "$out/edge-signed.toml" \
  --origin "http://$origin_addr" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
signed_edge_addr=$server_addr
"$bin/eddy-upload" "$clip" --origin "http://$origin_addr" --token "$token" --wait | tee "$out/upload.txt"
video=$(sed -n 's/^video: //p' "$out/upload.txt")
# The origin names itself in playback URLs unless `playback_url` is set; viewers go through the edge.
playback=$(sed -n 's/^playback: //p' "$out/upload.txt" | sed "s#http://$origin_addr#http://$signed_edge_addr#")
echo "   without a token the edge answers $(curl -s -o /dev/null -w '%{http_code}' "http://$signed_edge_addr/videos/$video/master.m3u8")"
echo "   playing $playback"
"$bin/eddy-play" "$playback" --headless --quiet --duration 10 --report "$out/report-origin.json" >/dev/null
python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("   played %.1f s with %d stalls" % (r["played_s"], r["stall_count"]))' "$out/report-origin.json"
echo
echo "Report: $out/report.json   Timeline: $out/timeline.svg   Link log: $out/netsim.jsonl"
