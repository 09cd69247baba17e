#!/usr/bin/env python3
"""Benchmark clients and offline computations for bench/run.sh (stdlib only).

Subcommands (each prints one JSON object on stdout):
  flash HOST:PORT PATH --clients N     N clients, connected first, then all ask for PATH at once:
                                       time to first byte / last byte at p50/p99, statuses.
  ttfb EDGE ORIGIN --requests N        one client, alternating straight-to-origin and through-the-edge
                                       misses of fresh objects: time to first byte at p50/p99 for each.
  vod-gen --seed S --out FILE          a deterministic VOD request sequence (`path size` per line).
  replay HOST:PORT FILE                sends the sequence one request at a time; bytes asked for.
  belady FILE --capacity BYTES         byte hit ratio of Belady's offline policy on the sequence.
  origin-bytes LOG OFFSET              bytes and requests the origin logged after byte OFFSET of LOG.
  watch-size DIR OUT / summarize-sizes  sample a cache directory's size while a replay runs.
  table RESULTS.jsonl                  the markdown table of a run.

The pure parts (percentiles, the workload model, Belady) are plain functions tested in test_tools.py.
"""

import argparse
import asyncio
import heapq
import json
import math
import os
import random
import signal
import socket
import sys
import time

# ---------------------------------------------------------------------------------------------- pure


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    if not values:
        raise ValueError("percentile of an empty list")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def object_path(size, delay_ms, name):
    return f"/o/{size}/{delay_ms}/{name}"


class ZipfSampler:
    """Draws ranks 0..n-1 with probability proportional to 1/(rank+1)^s."""

    def __init__(self, n, s, rng):
        weights = [1.0 / (rank + 1) ** s for rank in range(n)]
        total = sum(weights)
        self.cumulative = []
        running = 0.0
        for weight in weights:
            running += weight / total
            self.cumulative.append(running)
        self.rng = rng

    def draw(self):
        u = self.rng.random()
        low, high = 0, len(self.cumulative) - 1
        while low < high:
            middle = (low + high) // 2
            if self.cumulative[middle] < u:
                low = middle + 1
            else:
                high = middle
        return low


# Segment sizes by rendition (bytes for one segment): a 2 s segment at 0.4-4 Mb/s, scaled down 10x so
# that a replay moves a few GB instead of tens of GB. Byte hit ratio does not depend on the scale.
RENDITION_SEGMENT_BYTES = [10_000, 20_000, 37_500, 62_500, 100_000]


def vod_catalogue(titles, rng):
    """Per title: (rendition segment size, number of segments). Popular and unpopular titles alike."""
    catalogue = []
    for _ in range(titles):
        size = rng.choice(RENDITION_SEGMENT_BYTES)
        segments = rng.randint(20, 90)
        catalogue.append((size, segments))
    return catalogue


def segment_size(title_size, title, segment):
    """Deterministic +-20% jitter around the title's segment size (encoders vary by scene)."""
    jitter = ((title * 7919 + segment * 104729) % 401 - 200) / 1000.0
    return max(1, int(title_size * (1.0 + jitter)))


def watched_segments(rng, length):
    """How many segments a viewer watches from segment 0: half zap away within the first few segments
    (geometric, mean 3), the others leave with a 2% chance per segment (mean ~50), capped by the title."""
    if rng.random() < 0.5:
        hazard = 1.0 / 3.0
    else:
        hazard = 0.02
    watched = 1
    while watched < length and rng.random() >= hazard:
        watched += 1
    return watched


def vod_sequence(seed, titles=200, sessions=2000, zipf_s=0.9):
    """The request sequence of `sessions` viewers, each choosing a Zipf-popular title and watching from
    segment 0 with abandonment; sessions are interleaved as concurrent viewers would be (each step, one
    active session chosen at random requests its next segment). Returns [(path, size)]."""
    rng = random.Random(seed)
    catalogue = vod_catalogue(titles, rng)
    popularity = ZipfSampler(titles, zipf_s, rng)
    plans = []
    for _ in range(sessions):
        title = popularity.draw()
        size, length = catalogue[title]
        plans.append((title, size, watched_segments(rng, length)))
    sequence = []
    active = []  # [title, size, watched, next segment]
    pending = list(reversed(plans))
    concurrent = 50
    while pending or active:
        while pending and len(active) < concurrent:
            title, size, watched = pending.pop()
            active.append([title, size, watched, 0])
        index = rng.randrange(len(active))
        title, size, watched, segment = active[index]
        bytes_ = segment_size(size, title, segment)
        sequence.append((object_path(bytes_, 0, f"vod/t{title}/s{segment}.ts"), bytes_))
        active[index][3] += 1
        if active[index][3] >= watched:
            active[index] = active[-1]
            active.pop()
    return sequence


def catalogue_bytes(seed, titles=200):
    rng = random.Random(seed)
    catalogue = vod_catalogue(titles, rng)
    return sum(segment_size(size, t, s) for t, (size, length) in enumerate(catalogue) for s in range(length))


def belady_byte_hit_ratio(sequence, capacity):
    """Belady's offline policy with sizes: on a miss the object is admitted, then the cached objects
    whose next request is furthest away (possibly the new one: a bypass) are evicted until the cache
    fits. Optimal for equal sizes; for mixed sizes it is the usual practical stand-in for the optimum
    (the exact problem is NP-hard). Returns (byte hit ratio, hit bytes, total bytes)."""
    never = len(sequence)
    next_use = [never] * len(sequence)
    last_seen = {}
    for index in range(len(sequence) - 1, -1, -1):
        path = sequence[index][0]
        next_use[index] = last_seen.get(path, never)
        last_seen[path] = index
    cached = {}  # path -> (size, next use)
    heap = []  # (-next use, path), stale entries skipped
    used = 0
    hit_bytes = 0
    total_bytes = 0
    for index, (path, size) in enumerate(sequence):
        total_bytes += size
        upcoming = next_use[index]
        if path in cached:
            hit_bytes += size
            cached[path] = (size, upcoming)
            heapq.heappush(heap, (-upcoming, path))
            continue
        if upcoming == never or size > capacity:
            continue
        cached[path] = (size, upcoming)
        heapq.heappush(heap, (-upcoming, path))
        used += size
        while used > capacity:
            negative, victim = heapq.heappop(heap)
            entry = cached.get(victim)
            if entry is None or entry[1] != -negative:
                continue
            used -= entry[0]
            del cached[victim]
    return (hit_bytes / total_bytes if total_bytes else 0.0), hit_bytes, total_bytes


# ---------------------------------------------------------------------------------------------- HTTP


def split_address(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def head_end_and_length(buffer):
    """(index after the head, status, content length) once the head is complete, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buffer[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    return end + 4, status, length


class BlockingClient:
    """One keep-alive HTTP/1.1 connection; `get` returns (status, body bytes, ttfb s, ttlb s)."""

    def __init__(self, address):
        self.address = address
        self.sock = None

    def connect(self):
        self.sock = socket.create_connection(split_address(self.address), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get(self, path):
        if self.sock is None:
            self.connect()
        request = f"GET {path} HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: bench\r\n\r\n".encode()
        started = time.perf_counter()
        self.sock.sendall(request)
        buffer = b""
        first = None
        parsed = None
        while parsed is None:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionError(f"connection closed before the response head of {path}")
            if first is None:
                first = time.perf_counter()
            buffer += chunk
            parsed = head_end_and_length(buffer)
        start, status, length = parsed
        received = len(buffer) - start
        while received < length:
            chunk = self.sock.recv(min(1 << 20, length - received))
            if not chunk:
                raise ConnectionError(f"connection closed mid-body of {path}")
            received += len(chunk)
        return status, received, first - started, time.perf_counter() - started

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class FlashClient(asyncio.Protocol):
    """One client of the flash crowd: records when it sent, saw the first byte, saw the last byte."""

    def __init__(self, done):
        self.done = done
        self.transport = None
        self.buffer = b""
        self.head = None
        self.received = 0
        self.sent_at = None
        self.first_at = None
        self.last_at = None
        self.status = None

    def connection_made(self, transport):
        self.transport = transport

    def send(self, request):
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data):
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        if self.head is None:
            self.buffer += data
            parsed = head_end_and_length(self.buffer)
            if parsed is None:
                return
            self.head = parsed
            self.status = parsed[1]
            self.received = len(self.buffer) - parsed[0]
            self.buffer = b""
        else:
            self.received += len(data)
        if self.received >= self.head[2]:
            self.last_at = now
            self.transport.close()
            if not self.done.done():
                self.done.set_result(True)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(False)


async def flash_crowd(address, path, clients, timeout):
    loop = asyncio.get_running_loop()
    host, port = split_address(address)
    crowd = []
    for _ in range(clients):
        done = loop.create_future()
        _, protocol = await loop.create_connection(lambda d=done: FlashClient(d), host, port)
        crowd.append((protocol, done))
    request = f"GET {path} HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: bench\r\n\r\n".encode()
    for protocol, _ in crowd:
        protocol.send(request)
    try:
        await asyncio.wait_for(asyncio.gather(*(done for _, done in crowd)), timeout)
    except asyncio.TimeoutError:
        pass
    complete = [p for p, _ in crowd if p.last_at is not None and p.status == 200]
    for protocol, _ in crowd:
        if protocol.transport is not None:
            protocol.transport.close()
    ttfb = [(p.first_at - p.sent_at) * 1000 for p in complete]
    ttlb = [(p.last_at - p.sent_at) * 1000 for p in complete]
    statuses = {}
    for protocol, _ in crowd:
        statuses[str(protocol.status)] = statuses.get(str(protocol.status), 0) + 1
    result = {"clients": clients, "complete": len(complete), "statuses": statuses}
    if complete:
        result.update(
            ttfb_p50_ms=percentile(ttfb, 50),
            ttfb_p99_ms=percentile(ttfb, 99),
            ttlb_p50_ms=percentile(ttlb, 50),
            ttlb_p99_ms=percentile(ttlb, 99),
        )
    return result


# ---------------------------------------------------------------------------------------------- commands


def command_flash(args):
    result = asyncio.run(flash_crowd(args.address, args.path, args.clients, args.timeout))
    print(json.dumps(result))
    return 0 if result["complete"] == args.clients else 1


def command_ttfb(args):
    direct = BlockingClient(args.origin)
    through = BlockingClient(args.edge)
    direct_ms, edge_ms = [], []
    for index in range(args.warmup + args.requests):
        # Alternate so that drift (other load on the machine) affects both sides alike.
        path = object_path(args.size, 0, f"miss/{args.tag}/{index}.ts")
        # Alternate the order too: a request right after another one meets a busier origin.
        if index % 2:
            status_direct, _, ttfb_direct, _ = direct.get(path + "?direct")
            status_edge, _, ttfb_edge, _ = through.get(path)
        else:
            status_edge, _, ttfb_edge, _ = through.get(path)
            status_direct, _, ttfb_direct, _ = direct.get(path + "?direct")
        if status_direct != 200 or status_edge != 200:
            print(json.dumps({"error": f"statuses {status_direct} / {status_edge} for {path}"}))
            return 1
        if index >= args.warmup:
            direct_ms.append(ttfb_direct * 1000)
            edge_ms.append(ttfb_edge * 1000)
    direct.close()
    through.close()
    result = {
        "requests": args.requests,
        "direct_p50_ms": percentile(direct_ms, 50),
        "direct_p99_ms": percentile(direct_ms, 99),
        "edge_p50_ms": percentile(edge_ms, 50),
        "edge_p99_ms": percentile(edge_ms, 99),
    }
    result["added_p50_ms"] = result["edge_p50_ms"] - result["direct_p50_ms"]
    result["added_p99_ms"] = result["edge_p99_ms"] - result["direct_p99_ms"]
    print(json.dumps(result))
    return 0


def command_vod_gen(args):
    sequence = vod_sequence(args.seed, args.titles, args.sessions, args.zipf)
    with open(args.out, "w") as out:
        for path, size in sequence:
            out.write(f"{path} {size}\n")
    distinct = {}
    for path, size in sequence:
        distinct[path] = size
    print(
        json.dumps(
            {
                "requests": len(sequence),
                "requested_bytes": sum(size for _, size in sequence),
                "distinct_objects": len(distinct),
                "distinct_bytes": sum(distinct.values()),
                "catalogue_bytes": catalogue_bytes(args.seed, args.titles),
            }
        )
    )
    return 0


def read_sequence(path):
    sequence = []
    with open(path) as lines:
        for line in lines:
            name, size = line.split()
            sequence.append((name, int(size)))
    return sequence


def command_replay(args):
    sequence = read_sequence(args.sequence)
    client = BlockingClient(args.address)
    received = 0
    failures = 0
    started = time.perf_counter()
    for path, size in sequence:
        status, got, _, _ = client.get(path)
        received += got
        if status != 200 or got != size:
            failures += 1
    client.close()
    print(
        json.dumps(
            {
                "requests": len(sequence),
                "bytes": received,
                "failures": failures,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
    )
    return 0 if failures == 0 else 1


def command_belady(args):
    ratio, hit, total = belady_byte_hit_ratio(read_sequence(args.sequence), args.capacity)
    print(json.dumps({"byte_hit_ratio": ratio, "hit_bytes": hit, "total_bytes": total, "capacity": args.capacity}))
    return 0


def command_origin_bytes(args):
    requests = 0
    sent = 0
    with open(args.log, "rb") as log:
        log.seek(args.offset)
        for line in log:
            fields = line.split()
            if len(fields) == 2 and (args.contains is None or args.contains.encode() in fields[0]):
                requests += 1
                sent += int(fields[1])
    print(json.dumps({"requests": requests, "bytes": sent}))
    return 0


def median_figures(runs):
    """One set of figures from several runs of the same thing: each number is its median (the lower
    middle one for an even count, so that it is a figure that was actually measured). The spread of
    each number over the runs is kept under "spread" as {key: (min, max)}."""
    merged = dict(runs[0])
    spread = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = sorted(run[key] for run in runs if key in run)
            merged[key] = values[(len(values) - 1) // 2]
            spread[key] = (values[0], values[-1])
    merged["runs"] = len(runs)
    merged["spread"] = spread
    return merged


# A run of record is measured on a quiet machine: a 1-minute load average over this before the run
# means other work shared the cores, and the ratios measured that work as much as the servers.
QUIET_LOAD = 0.5


def record_verdict(load_before):
    """The line that says whether a run is a run of record, from the 1-minute load average before it."""
    try:
        one_minute = float(str(load_before).split()[0])
    except (ValueError, IndexError):
        return "**NOT a run of record**: the load average before the run is unknown"
    if one_minute > QUIET_LOAD:
        return (f"**NOT a run of record**: the 1-minute load average before the run was {one_minute:.2f}, "
                f"over {QUIET_LOAD}; other work shared the cores")
    return f"**Run of record**: the 1-minute load average before the run was {one_minute:.2f} (at most {QUIET_LOAD})"


def with_spread(figures, key, text):
    """`text` (the median, formatted) followed by the min–max over the runs in the same format, when
    there were several runs."""
    low_high = figures.get("spread", {}).get(key)
    if not low_high or figures.get("runs", 1) < 2:
        return text
    low, high = low_high
    fmt = text_format(text)
    return f"{text} ({fmt(low, key)}–{fmt(high, key)})"


def text_format(sample):
    """How a median was formatted, to format its min and max alike."""
    def fmt(value, key):
        if key.endswith("_us"):
            return f"{value / 1000:.2f}"
        if key == "bytes_per_s":
            return f"{value / 1e6:,.0f}"
        if "." in sample:
            return f"{value:.{len(sample.split('.')[-1])}f}"
        return f"{value:,.0f}"
    return fmt


def format_table(results, load, duration, access_log, nginx_sendfile="on", load_before="?"):
    """The markdown table of a run from its result records ({"scenario", "server", "figures"}). In the
    throughput scenarios each figure is the median over the rounds, with its min–max in brackets."""
    runs = {}
    for record in results:
        runs.setdefault((record["scenario"], record["server"]), []).append(record["figures"])
    by = {key: median_figures(figures) for key, figures in runs.items()}
    lines = [
        record_verdict(load_before),
        "",
        f"load average before: {load_before}; at the end: {load}; {duration} s of load per wrk run "
        f"(medians, min–max in brackets); access logs: {access_log}; nginx sendfile: {nginx_sendfile}",
        "",
        "| scenario | figure | eddy | nginx | eddy / nginx | target | holds |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(scenario, figure, eddy, nginx, ratio, target, holds):
        mark = "" if holds is None else ("yes" if holds else "**no**")
        lines.append(f"| {scenario} | {figure} | {eddy} | {nginx} | {ratio} | {target} | {mark} |")

    def ratio(a, b):
        return f"{a / b:.2f}" if b else "n/a"

    def cpu_row(e, n):
        key = "server_cpu_us_per_request"
        if key in e and key in n:
            row("", "server CPU µs / request", with_spread(e, key, f"{e[key]:.1f}"), with_spread(n, key, f"{n[key]:.1f}"),
                ratio(e[key], n[key]), "", None)
        key = "origin_requests_under_load"
        if key in e and key in n:
            row("", "origin requests under load (all hits: 0)", e[key], n[key], "", "0", e[key] == 0)

    e, n = by.get((1, "eddy")), by.get((1, "nginx"))
    if e and n:
        row("1 hits, 1 KB playlist, 64 conns", "requests/s", with_spread(e, "rps", f"{e['rps']:,.0f}"),
            with_spread(n, "rps", f"{n['rps']:,.0f}"), ratio(e["rps"], n["rps"]), ">= 1.25",
            e["rps"] >= 1.25 * n["rps"])
        row("", "p50 latency ms", with_spread(e, "p50_us", f"{e['p50_us'] / 1000:.2f}"),
            with_spread(n, "p50_us", f"{n['p50_us'] / 1000:.2f}"), ratio(e["p50_us"], n["p50_us"]), "", None)
        row("", "p99 latency ms", with_spread(e, "p99_us", f"{e['p99_us'] / 1000:.2f}"),
            with_spread(n, "p99_us", f"{n['p99_us'] / 1000:.2f}"), ratio(e["p99_us"], n["p99_us"]), "<= 1.0",
            e["p99_us"] <= n["p99_us"])
        cpu_row(e, n)
        row("", "errors", e["errors"], n["errors"], "", "0", e["errors"] == 0)
    e, n = by.get((2, "eddy")), by.get((2, "nginx"))
    if e and n:
        row("2 hits, 1 MB segments, 16 conns", "MB/s", with_spread(e, "bytes_per_s", f"{e['bytes_per_s'] / 1e6:,.0f}"),
            with_spread(n, "bytes_per_s", f"{n['bytes_per_s'] / 1e6:,.0f}"),
            ratio(e["bytes_per_s"], n["bytes_per_s"]), ">= 1.0", e["bytes_per_s"] >= n["bytes_per_s"])
        row("", "requests/s", with_spread(e, "rps", f"{e['rps']:,.0f}"), with_spread(n, "rps", f"{n['rps']:,.0f}"),
            ratio(e["rps"], n["rps"]), "", None)
        row("", "p99 latency ms", with_spread(e, "p99_us", f"{e['p99_us'] / 1000:.2f}"),
            with_spread(n, "p99_us", f"{n['p99_us'] / 1000:.2f}"), ratio(e["p99_us"], n["p99_us"]), "<= 1.0",
            e["p99_us"] <= n["p99_us"])
        cpu_row(e, n)
    e, n = by.get((3, "eddy")), by.get((3, "nginx"))
    if e and n:
        row("3 flash crowd: 500 clients, 2 MB, origin 200 ms", "origin requests", e["origin_requests"],
            n["origin_requests"], "", "eddy = 1", e["origin_requests"] == 1)
        row("", "complete 200s", e["complete"], n["complete"], "", "500", e["complete"] == e["clients"])
        for key, label in [("ttfb_p50_ms", "TTFB p50 ms"), ("ttfb_p99_ms", "TTFB p99 ms"),
                           ("ttlb_p50_ms", "TTLB p50 ms"), ("ttlb_p99_ms", "TTLB p99 ms")]:
            if key in e and key in n:
                target, holds = ("<= 1.0", e[key] <= n[key]) if key == "ttlb_p99_ms" else ("", None)
                row("", label, f"{e[key]:.0f}", f"{n[key]:.0f}", ratio(e[key], n[key]), target, holds)
    e, n = by.get((4, "eddy")), by.get((4, "nginx"))
    if e and n:
        row("4 miss overhead, 1 KB, one client", "added TTFB p50 ms", f"{e['added_p50_ms']:.3f}",
            f"{n['added_p50_ms']:.3f}", ratio(e["added_p50_ms"], n["added_p50_ms"]), "eddy < 1 ms",
            e["added_p50_ms"] < 1.0)
        row("", "added TTFB p99 ms", f"{e['added_p99_ms']:.3f}", f"{n['added_p99_ms']:.3f}",
            ratio(e["added_p99_ms"], n["added_p99_ms"]), "", None)
        row("", "straight from origin p50 / p99 ms", f"{e['direct_p50_ms']:.3f} / {e['direct_p99_ms']:.3f}",
            f"{n['direct_p50_ms']:.3f} / {n['direct_p99_ms']:.3f}", "", "", None)
    variants = [("eddy-s3fifo", "eddy (S3-FIFO, its default)"), ("eddy-tinylfu", "eddy (TinyLFU)"),
                ("eddy-lru", "eddy (LRU)"), ("nginx", "nginx"), ("belady", "Belady (offline)"),
                ("eddy-s3fifo-at-nginx-size", "eddy (S3-FIFO) given the bytes nginx held"),
                ("belady-at-nginx-size", "Belady given the bytes nginx held")]
    if any((5, v) in by for v, _ in variants):
        lines += ["", "| scenario 5: VOD replay | cache size | byte hit ratio | origin bytes | requests |",
                  "|---|---|---|---|---|"]
        for variant, label in variants:
            f = by.get((5, variant))
            if not f:
                continue
            origin = f.get("origin_bytes", f.get("total_bytes", 0) - f.get("hit_bytes", 0))
            requests = f.get("requests", "")
            size = f"{f['capacity'] / 1e6:.1f} MB" if "capacity" in f else "same"
            if "cache_mean_bytes" in f:
                size += (f" max_size; held {f['cache_mean_bytes'] / 1e6:.1f} MB on average, "
                         f"{f['cache_peak_bytes'] / 1e6:.1f} MB at peak")
            lines.append(f"| {label} | {size} | {f['byte_hit_ratio'] * 100:.1f}% | {origin / 1e6:,.0f} MB "
                         f"| {requests} |")
        lines += vod_verdict(by)
    return "\n".join(lines)


def vod_verdict(by):
    """Issue 18's goal 5 for eddy's default policy: at least nginx's byte hit ratio at the bytes nginx
    really held, and within 5 points of Belady's at the nominal size."""
    eddy, nginx, best = (by.get((5, v)) for v in ("eddy-s3fifo", "nginx", "belady"))
    if not (eddy and nginx and best):
        return []
    e, g, b = eddy["byte_hit_ratio"], nginx["byte_hit_ratio"], best["byte_hit_ratio"]
    lines = ["", f"target: eddy (S3-FIFO) >= nginx at the same nominal size: {'yes' if e >= g else '**no**'} "
                 f"({(e - g) * 100:+.1f} points); within 5 points of Belady: "
                 f"{'yes' if b - e <= 0.05 else '**no**'} ({(b - e) * 100:.1f} points below)"]
    held = by.get((5, "eddy-s3fifo-at-nginx-size"))
    if held:
        h = held["byte_hit_ratio"]
        lines.append(f"at the bytes nginx really held: eddy (S3-FIFO) >= nginx: "
                     f"{'yes' if h >= g else '**no**'} ({(h - g) * 100:+.1f} points)")
    return lines


def command_table(args):
    with open(args.results) as lines:
        results = [json.loads(line) for line in lines if line.strip()]
    print(format_table(results, args.load, args.duration, args.access_log, args.nginx_sendfile, args.load_before))
    return 0


def directory_bytes(path):
    """Bytes a directory tree occupies as nginx counts them (allocated blocks, at least the file size)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                info = os.stat(os.path.join(root, name))
            except FileNotFoundError:
                continue  # evicted while we walked
            total += max(info.st_size, info.st_blocks * 512)
    return total


def command_watch_size(args):
    """Samples a directory's size every --interval seconds until terminated (SIGTERM)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(args.out, "a", buffering=1) as out:
        while True:
            out.write(f"{directory_bytes(args.directory)}\n")
            time.sleep(args.interval)


def command_summarize_sizes(args):
    with open(args.samples) as lines:
        samples = [int(line) for line in lines if line.strip()]
    if not samples:
        print("null")
        return 0
    print(json.dumps({"cache_mean_bytes": sum(samples) / len(samples), "cache_peak_bytes": max(samples),
                      "cache_samples": len(samples)}))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    flash = commands.add_parser("flash")
    flash.add_argument("address")
    flash.add_argument("path")
    flash.add_argument("--clients", type=int, default=500)
    flash.add_argument("--timeout", type=float, default=60.0)
    flash.set_defaults(run=command_flash)

    ttfb = commands.add_parser("ttfb")
    ttfb.add_argument("edge")
    ttfb.add_argument("origin")
    ttfb.add_argument("--requests", type=int, default=300)
    ttfb.add_argument("--warmup", type=int, default=20)
    ttfb.add_argument("--size", type=int, default=1000)
    ttfb.add_argument("--tag", default="run")
    ttfb.set_defaults(run=command_ttfb)

    gen = commands.add_parser("vod-gen")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--titles", type=int, default=200)
    gen.add_argument("--sessions", type=int, default=2000)
    gen.add_argument("--zipf", type=float, default=0.9)
    gen.add_argument("--out", required=True)
    gen.set_defaults(run=command_vod_gen)

    replay = commands.add_parser("replay")
    replay.add_argument("address")
    replay.add_argument("sequence")
    replay.set_defaults(run=command_replay)

    belady = commands.add_parser("belady")
    belady.add_argument("sequence")
    belady.add_argument("--capacity", type=int, required=True)
    belady.set_defaults(run=command_belady)

    origin_bytes = commands.add_parser("origin-bytes")
    origin_bytes.add_argument("log")
    origin_bytes.add_argument("offset", type=int)
    origin_bytes.add_argument("--contains", default=None)
    origin_bytes.set_defaults(run=command_origin_bytes)

    watch = commands.add_parser("watch-size")
    watch.add_argument("directory")
    watch.add_argument("out")
    watch.add_argument("--interval", type=float, default=0.25)
    watch.set_defaults(run=command_watch_size)

    summarize = commands.add_parser("summarize-sizes")
    summarize.add_argument("samples")
    summarize.set_defaults(run=command_summarize_sizes)

    table = commands.add_parser("table")
    table.add_argument("results")
    table.add_argument("--load", default="?")
    table.add_argument("--load-before", default="?")
    table.add_argument("--duration", default="?")
    table.add_argument("--access-log", default="?")
    table.add_argument("--nginx-sendfile", default="on")
    table.set_defaults(run=command_table)

    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
