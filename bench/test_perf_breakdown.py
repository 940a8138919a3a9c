"""Tests of bench/perf_breakdown.py: `python3 -m unittest discover -s bench -p 'test_*.py'`."""

import unittest

import perf_breakdown

SAMPLES = """\
 55d0c1a2b3c4 webrtc_vad::Vad::is_voice_segment (/work/target/release/cxb-core)
 55d0c1a2b3c5 WebRtcVad_CalcVad8khz (/work/target/release/cxb-core)
 55d0c1a2b3c6 <tokio::net::tcp::stream::TcpStream as tokio::io::AsyncRead>::poll_read (/work/target/release/cxb-core)
 55d0c1a2b3c7 tokio::runtime::scheduler::multi_thread::worker::Context::run (/work/target/release/cxb-core)
 55d0c1a2b3c8 core::ptr::drop_in_place<alloc::vec::Vec<u8>> (/work/target/release/cxb-core)
 ffffffff815f12e6 tcp_sendmsg ([kernel.kallsyms])
 7f5eae95962a __memmove_avx_unaligned_erms (/usr/lib/x86_64-linux-gnu/libc.so.6)
 7f5eae95962b _PyEval_EvalFrameDefault (/usr/lib/libpython3.11.so.1.0)
 7f5eae95962c encoder_listencode_obj (/venv/lib/_json.cpython-311-x86_64-linux-gnu.so)

"""


class GroupTest(unittest.TestCase):
    def test_rust_symbols_by_crate_others_by_object(self):
        counts = perf_breakdown.parse(SAMPLES.splitlines())
        self.assertEqual(counts["tokio"], 2)
        self.assertEqual(counts["webrtc_vad"], 1)
        # A C symbol linked into the binary has no crate: it counts under the binary.
        self.assertEqual(counts["cxb-core"], 1)
        self.assertEqual(counts["std (Rust runtime: alloc, fmt, sync)"], 1)
        self.assertEqual(counts["kernel"], 1)
        self.assertEqual(counts["libc (malloc, memcpy, syscalls)"], 1)
        self.assertEqual(counts["libpython3.11"], 1)
        self.assertEqual(counts["_json"], 1)
        self.assertEqual(sum(counts.values()), 9)

    def test_table_shares_and_cpu_per_call(self):
        counts = perf_breakdown.parse(SAMPLES.splitlines())
        lines = perf_breakdown.table(counts, cpu_per_call=0.09, top=1)
        self.assertEqual(lines[2], "| tokio | 22.2 % | 20.0 |")
        self.assertEqual(lines[3], "| everything else | 77.8 % | 70.0 |")
        self.assertEqual(lines[-1], "\n9 samples")


STAT = """\
# started on Mon Dec  7 22:30:00 2026


 Performance counter stats for process id '1234':

            842.51 msec task-clock                       #    0.021 CPUs utilized
            96,410      context-switches                 #  114.431 K/sec
               812      cpu-migrations                   #  963.789 /sec

      40.112 seconds time elapsed
"""


class StatTest(unittest.TestCase):
    def test_switches_and_migrations_per_call(self):
        lines = perf_breakdown.stat_per_call(STAT.splitlines(), calls=20)
        self.assertEqual(lines, ["context-switches: 96410 (4820 per call)", "cpu-migrations: 812 (41 per call)"])

    def test_no_calls_no_per_call_figures(self):
        self.assertEqual(perf_breakdown.stat_per_call(STAT.splitlines(), calls=0), [])


if __name__ == "__main__":
    unittest.main()
