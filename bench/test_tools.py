#!/usr/bin/env python3
"""Tests of the benchmark's pure parts: `python3 -m unittest bench/test_tools.py` (well under a second)."""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tools  # noqa: E402


class Percentiles(unittest.TestCase):
    def test_nearest_rank(self):
        values = list(range(1, 101))
        self.assertEqual(tools.percentile(values, 50), 50)
        self.assertEqual(tools.percentile(values, 99), 99)
        self.assertEqual(tools.percentile(values, 100), 100)
        self.assertEqual(tools.percentile([7], 99), 7)

    def test_empty_is_an_error(self):
        with self.assertRaises(ValueError):
            tools.percentile([], 50)


class Medians(unittest.TestCase):
    def test_each_number_is_its_median_over_runs(self):
        runs = [{"rps": 10.0, "errors": 0, "p99_us": 900}, {"rps": 30.0, "errors": 2, "p99_us": 100},
                {"rps": 20.0, "errors": 0, "p99_us": 500}]
        merged = tools.median_figures(runs)
        self.assertEqual((merged["rps"], merged["errors"], merged["p99_us"], merged["runs"]), (20.0, 0, 500, 3))

    def test_even_counts_take_a_measured_value(self):
        self.assertEqual(tools.median_figures([{"x": 1}, {"x": 4}])["x"], 1)

    def test_the_spread_over_runs_is_kept(self):
        merged = tools.median_figures([{"rps": 10.0}, {"rps": 30.0}, {"rps": 20.0}])
        self.assertEqual(merged["spread"]["rps"], (10.0, 30.0))
        self.assertEqual(tools.with_spread(merged, "rps", "20"), "20 (10–30)")
        one = tools.median_figures([{"p99_us": 1500}])
        self.assertEqual(tools.with_spread(one, "p99_us", "1.50"), "1.50", "no brackets for a single run")

    def test_table_rows_show_median_and_min_max(self):
        results = []
        for rps_e, rps_n in [(100.0, 50.0), (120.0, 60.0), (110.0, 40.0)]:
            base = {"p50_us": 1000, "p99_us": 2000, "errors": 0, "server_cpu_us_per_request": 10.0}
            results.append({"scenario": 1, "server": "eddy", "figures": dict(base, rps=rps_e)})
            results.append({"scenario": 1, "server": "nginx", "figures": dict(base, rps=rps_n)})
        table = tools.format_table(results, "0.3 0.2 0.1", "8 x 3", "on", load_before="0.2 0.1 0.1")
        self.assertIn("| 110 (100–120) | 50 (40–60) | 2.20 |", table)


class RunOfRecord(unittest.TestCase):
    def test_only_a_quiet_machine_makes_a_run_of_record(self):
        self.assertTrue(tools.record_verdict("0.42 1.0 2.0").startswith("**Run of record**"))
        self.assertTrue(tools.record_verdict("0.50 0.0 0.0").startswith("**Run of record**"))
        self.assertTrue(tools.record_verdict("1.51 0.2 0.1").startswith("**NOT a run of record**"))
        self.assertTrue(tools.record_verdict("?").startswith("**NOT a run of record**"))

    def test_the_table_says_which_it_is(self):
        table = tools.format_table([], "2.0 2.0 2.0", "8", "on", load_before="2.9 1 1")
        self.assertTrue(table.startswith("**NOT a run of record**"), table)


class Belady(unittest.TestCase):
    def test_keeps_what_comes_back_soonest(self):
        # Room for one object of 10: after A, B arrives; A is asked again before B, so B is bypassed.
        sequence = [("A", 10), ("B", 10), ("A", 10), ("B", 10)]
        ratio, hit, total = tools.belady_byte_hit_ratio(sequence, 10)
        self.assertEqual((hit, total), (10, 40))
        self.assertAlmostEqual(ratio, 0.25)

    def test_objects_never_asked_again_are_not_admitted(self):
        sequence = [("A", 10), ("X", 10), ("A", 10)]
        self.assertEqual(tools.belady_byte_hit_ratio(sequence, 10)[1], 10)

    def test_is_at_least_as_good_as_lru(self):
        rng = random.Random(3)
        sequence = [(f"o{int(rng.paretovariate(1.0)) % 50}", 10 + (i % 7)) for i in range(3000)]
        capacity = 120
        lru, used, hit = {}, 0, 0
        for path, size in sequence:
            if path in lru:
                hit += size
                lru[path] = lru.pop(path)
                continue
            lru[path] = size
            used += size
            while used > capacity:
                oldest = next(iter(lru))
                used -= lru.pop(oldest)
        self.assertGreaterEqual(tools.belady_byte_hit_ratio(sequence, capacity)[1], hit)


class Workload(unittest.TestCase):
    def test_same_seed_same_sequence(self):
        first = tools.vod_sequence(5, titles=20, sessions=100)
        self.assertEqual(first, tools.vod_sequence(5, titles=20, sessions=100))
        self.assertNotEqual(first, tools.vod_sequence(6, titles=20, sessions=100))

    def test_viewers_start_at_segment_zero_and_watch_in_order(self):
        sequence = tools.vod_sequence(5, titles=20, sessions=1)
        segments = [int(path.rsplit("/s", 1)[1].split(".")[0]) for path, _ in sequence]
        self.assertEqual(segments, list(range(len(segments))))

    def test_sizes_match_the_path(self):
        for path, size in tools.vod_sequence(5, titles=20, sessions=50):
            self.assertEqual(int(path.split("/")[2]), size)

    def test_popular_titles_are_asked_more(self):
        sampler = tools.ZipfSampler(100, 1.0, random.Random(1))
        draws = [sampler.draw() for _ in range(20000)]
        self.assertGreater(draws.count(0), 5 * draws.count(50))


if __name__ == "__main__":
    unittest.main()


class Policies(unittest.TestCase):
    """bench/policies.py: the simulated eviction policies behave as their papers say on tiny traces."""

    def setUp(self):
        import policies
        self.policies = policies

    def test_a_one_hit_wonder_does_not_push_out_what_is_reused_under_s3fifo(self):
        # A (reused) and a scan of newcomers through a cache of 3: S3-FIFO keeps A in main, LRU loses it.
        sequence = [("A", 1), ("A", 1)] + [(f"scan{i}", 1) for i in range(6)] + [("A", 1)]
        self.assertEqual(self.policies.s3fifo(sequence, 3, small_share=0.34), 2)
        self.assertEqual(self.policies.lru(sequence, 3), 1)

    def test_no_policy_beats_belady_on_the_replay(self):
        sequence = tools.vod_sequence(3, titles=30, sessions=150)
        capacity = tools.catalogue_bytes(3, titles=30) // 10
        ratios = self.policies.compare(sequence, capacity)
        for name, ratio in ratios.items():
            self.assertLessEqual(ratio, ratios["belady"] + 1e-9, name)
            self.assertGreater(ratio, 0.0, name)

    def test_objects_larger_than_the_cache_are_never_cached(self):
        for name, policy in self.policies.POLICIES.items():
            self.assertEqual(policy([("big", 10), ("big", 10)], 5), 0, name)


class VodVerdict(unittest.TestCase):
    def test_judges_the_default_policy_against_nginx_at_its_bytes_and_belady_within_5_points(self):
        by = {(5, "eddy-s3fifo"): {"byte_hit_ratio": 0.55}, (5, "nginx"): {"byte_hit_ratio": 0.60},
              (5, "belady"): {"byte_hit_ratio": 0.59},
              (5, "eddy-s3fifo-at-nginx-size"): {"byte_hit_ratio": 0.61}}
        verdict = "\n".join(tools.vod_verdict(by))
        self.assertIn("within 5 points of Belady: yes (4.0 points below)", verdict)
        self.assertIn("at the bytes nginx really held: eddy (S3-FIFO) >= nginx: yes (+1.0 points)", verdict)
        by[(5, "belady")] = {"byte_hit_ratio": 0.61}
        self.assertIn("within 5 points of Belady: **no** (6.0 points below)", "\n".join(tools.vod_verdict(by)))

    def test_says_nothing_without_the_three_runs(self):
        self.assertEqual(tools.vod_verdict({(5, "nginx"): {"byte_hit_ratio": 0.6}}), [])
