"""Tests of bench/compare_report.py: `python3 -m unittest discover -s bench -p 'test_*.py'`."""

import argparse
import contextlib
import io
import json
import os
import tempfile
import unittest

import compare_report

SUMMARY = {
    "calls": 10,
    "completed": 9,
    "failed": 1,
    "failure_reasons": {"wait_timeout:bot_speaking(step 2)": 1},
    "call_seconds_total": 270.0,
    "dialler_cpu_secs": 1.5,
    "latency_minus_injected_ms": {"count": 27, "p50": 504.2, "p95": 511.0, "p99": 530.9},
    "opening_minus_tts_ttfb_ms": {"count": 10, "p50": 3.2, "p95": 4.0, "p99": 7.9},
    "protocol_violations": 2,
    "protocol_violation_kinds": {"media.ahead_of_real_time": 2},
    "media_stops": 9,
    "barge_in_says": 9,
    "bot_hangups": 9,
    "silent_bot_hangups": 1,
}


def args(tmp: str, stack: str, ticks1: int, summary: dict | None = SUMMARY) -> argparse.Namespace:
    path = os.path.join(tmp, f"{stack}.json")
    if summary is not None:
        with open(path, "w") as f:
            json.dump(summary, f)
    return argparse.Namespace(
        stack=stack,
        calls=10,
        summary=path,
        ticks0=1000,
        ticks1=ticks1,
        hz=100,
        idle_kb=20 * 1024,
        peak_kb=30 * 1024,
        busy=3000,
        wall=30.0,
    )


class RowTest(unittest.TestCase):
    def test_cpu_rss_latency_from_proc_and_summary(self):
        with tempfile.TemporaryDirectory() as tmp:
            r = compare_report.row(args(tmp, "cxb-core", ticks1=1180))
        self.assertAlmostEqual(r["cpu_secs"], 1.8)
        self.assertAlmostEqual(r["cpu_per_call"], 0.2)  # 1.8 CPU-s over 9 completed calls
        self.assertAlmostEqual(r["cpu_per_call_minute"], 0.4)  # over 4.5 call-minutes
        self.assertAlmostEqual(r["rss_per_call_mb"], 1.0)  # (30 - 20) MB over 10 calls
        self.assertEqual((r["latency_p50"], r["latency_p99"]), (504.2, 530.9))
        self.assertEqual((r["opening_p50"], r["opening_p99"]), (3.2, 7.9))
        self.assertEqual((r["completed"], r["failed"], r["protocol_violations"]), (9, 1, 2))
        # 30 CPU-s busy on the machine, 1.8 ours, 1.5 the dialler's, over 30 s: 0.89 cores.
        self.assertAlmostEqual(r["other_load_cores"], 0.89)

    def test_missing_summary_is_an_error_row(self):
        with tempfile.TemporaryDirectory() as tmp:
            r = compare_report.row(args(tmp, "pipecat", ticks1=1100, summary=None))
        self.assertIn("no dial summary", r["error"])

    def test_no_completed_calls_gives_no_per_call_cpu(self):
        with tempfile.TemporaryDirectory() as tmp:
            r = compare_report.row(args(tmp, "pipecat", ticks1=1100, summary={**SUMMARY, "completed": 0}))
        self.assertIsNone(r["cpu_per_call"])


class TableTest(unittest.TestCase):
    def test_ratio_to_cxb_core_at_the_same_level(self):
        with tempfile.TemporaryDirectory() as tmp:
            rows = [
                compare_report.row(args(tmp, "cxb-core", ticks1=1180)),
                compare_report.row(args(tmp, "pipecat", ticks1=2800)),
                compare_report.row(
                    args(tmp, "pipecat", ticks1=2000, summary={**SUMMARY, "completed": 0, "failed": 10,
                                                                 "latency_minus_injected_ms": {"count": 0}})
                ),
                {"stack": "pipecat", "calls": 20, "skipped": "not run: failed > 10 % at 10"},
            ]
            path = os.path.join(tmp, "rows.jsonl")
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                compare_report.table(path)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 6)
        self.assertIn("| cxb-core | 10 | 9 | 1 | 0.200 | 0.400 | 1.00 | 504 / 511 / 531 | 3 / 8 | 1.0× |", lines[2])
        self.assertIn("| pipecat | 10 | 9 | 1 | 2.000 | 4.000 |", lines[3])
        self.assertIn("| 10.0× | 8 / 9 | 2 |", lines[3])
        # Every call failed: no latency, no CPU per call, no ratio.
        self.assertIn("| pipecat | 10 | 0 | 10 | n/a | 2.222 | 1.00 | n/a | 3 / 8 | n/a |", lines[4])
        self.assertIn("not run: failed > 10 % at 10", lines[5])
        self.assertIn("wait_timeout", err.getvalue())


if __name__ == "__main__":
    unittest.main()
