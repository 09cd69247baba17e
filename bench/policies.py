#!/usr/bin/env python3
"""Eviction policies simulated on scenario 5's VOD replay, next to Belady's offline optimum: which
online policy is worth building into the edge (issue 18, goal 5).

    python3 bench/policies.py                 # seed 7, 1000 viewers, cache = 10 % of the catalogue
    python3 bench/policies.py --capacity 92800000

Byte hit ratio = hit bytes / requested bytes, as in bench/run.sh. The policies:
- LRU;
- S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023): a small FIFO
  (10 % of the bytes) for newcomers, a main FIFO, a ghost FIFO of recently evicted keys, 2-bit
  frequencies; by bytes rather than by object count;
- LFU-DA, i.e. GreedyDual-Size-Frequency with cost = size (Cherkasova, HPL-98-69, 1998), which for a
  byte hit ratio makes the priority L + frequency;
- GDSF with cost 1 (priority L + frequency / size), which favours small objects (object hit ratio).
"""

import argparse
import collections
import heapq
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tools  # noqa: E402


def lru(sequence, capacity):
    cached = collections.OrderedDict()
    used = hit = 0
    for path, size in sequence:
        if path in cached:
            cached.move_to_end(path)
            hit += size
            continue
        if size > capacity:
            continue
        cached[path] = size
        used += size
        while used > capacity:
            _, evicted = cached.popitem(last=False)
            used -= evicted
    return hit


def s3fifo(sequence, capacity, small_share=0.1, max_frequency=3):
    small, main, ghost = collections.OrderedDict(), collections.OrderedDict(), collections.OrderedDict()
    frequency, sizes = {}, {}
    small_bytes = main_bytes = ghost_bytes = hit = 0

    def evict_from_small():
        nonlocal small_bytes, main_bytes, ghost_bytes
        key, _ = small.popitem(last=False)
        small_bytes -= sizes[key]
        if frequency[key] > 0:
            # Asked again while on probation: promoted.
            main[key] = None
            main_bytes += sizes[key]
            frequency[key] = 0
            return
        del frequency[key]
        ghost[key] = sizes[key]
        ghost_bytes += sizes[key]
        while ghost and ghost_bytes > capacity:
            _, dropped = ghost.popitem(last=False)
            ghost_bytes -= dropped

    def evict_from_main():
        nonlocal main_bytes
        while True:
            key, _ = main.popitem(last=False)
            if frequency[key] > 0:
                frequency[key] -= 1
                main[key] = None
                continue
            main_bytes -= sizes[key]
            del frequency[key]
            return

    for path, size in sequence:
        if path in frequency:
            hit += size
            frequency[path] = min(max_frequency, frequency[path] + 1)
            continue
        if size > capacity:
            continue
        sizes[path] = size
        frequency[path] = 0
        if path in ghost:
            ghost_bytes -= ghost.pop(path)
            main[path] = None
            main_bytes += size
        else:
            small[path] = None
            small_bytes += size
        while small_bytes + main_bytes > capacity:
            if small and (small_bytes > capacity * small_share or not main):
                evict_from_small()
            else:
                evict_from_main()
    return hit


def greedy_dual(sequence, capacity, cost_is_size=True):
    inflation = 0.0
    priority, frequency, sizes = {}, {}, {}
    heap = []
    used = hit = 0
    for path, size in sequence:
        if path in priority:
            hit += size
            frequency[path] += 1
        else:
            if size > capacity:
                continue
            frequency[path] = 1
            sizes[path] = size
            used += size
        value = frequency[path] if cost_is_size else frequency[path] / size
        priority[path] = inflation + value
        heapq.heappush(heap, (priority[path], path))
        while used > capacity:
            lowest, victim = heapq.heappop(heap)
            if priority.get(victim) != lowest:
                continue
            inflation = lowest
            used -= sizes[victim]
            del priority[victim], frequency[victim], sizes[victim]
    return hit


POLICIES = {
    "lru": lru,
    "s3fifo": s3fifo,
    "lfu-da": greedy_dual,
    "gdsf-cost-1": lambda sequence, capacity: greedy_dual(sequence, capacity, cost_is_size=False),
}


def compare(sequence, capacity):
    total = sum(size for _, size in sequence)
    ratios = {name: policy(sequence, capacity) / total for name, policy in POLICIES.items()}
    ratios["belady"] = tools.belady_byte_hit_ratio(sequence, capacity)[0]
    return ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--capacity", type=int, help="bytes (default: 10 %% of the catalogue)")
    args = parser.parse_args()
    sequence = tools.vod_sequence(args.seed, sessions=args.sessions)
    capacity = args.capacity or tools.catalogue_bytes(args.seed) // 10
    ratios = compare(sequence, capacity)
    print(json.dumps({"capacity": capacity, "requests": len(sequence),
                      "byte_hit_ratio": {k: round(v, 4) for k, v in ratios.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
