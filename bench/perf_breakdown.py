#!/usr/bin/env python3
"""Where a server's CPU went, from a `perf record` of one bench/compare.sh run (PROFILE=1).

    perf_breakdown.py perf-STACK-N.data [--cpu-per-call SECS] [--top 15] [--stat FILE --calls N]

Reads the samples with `perf script -F ip,sym,dso` and groups them by self time (no call graphs,
so no frame pointers or DWARF are needed): a Rust symbol goes to its crate (the first path
segment of the demangled name, `<tokio::net::TcpStream as ...>` → `tokio`), a C or Python symbol to
its shared object (`libpython3.11`, `libonnxruntime`, the kernel). Prints one Markdown table:
group, share of the samples and, given the run's CPU-s per call, CPU-ms per call. Given a
`perf stat -e task-clock,context-switches,cpu-migrations` output of the same window and the calls
completed, also the context switches and migrations per call.
"""

import argparse
import collections
import os
import re
import subprocess
import sys

# `<impl Trait for Type>` and `<Type as Trait>` forms start with '<'; generic arguments follow '<'.
RUST_PATH = re.compile(r"^<*(?:&(?:mut )?|dyn )?([A-Za-z_][A-Za-z0-9_]*)::")


def group_of(dso: str, sym: str) -> str:
    """The crate of a Rust symbol, else the shared object the sample fell in."""
    dso = dso.strip("()")
    if "kernel" in dso or dso.startswith("["):
        return "kernel"
    m = RUST_PATH.match(sym)
    if m and m.group(1) not in ("std", "core", "alloc"):
        return m.group(1)
    if m:
        return "std (Rust runtime: alloc, fmt, sync)"
    base = os.path.basename(dso)
    if base.startswith("libc.so") or base.startswith("libc-"):
        return "libc (malloc, memcpy, syscalls)"
    # libpython3.11.so.1.0 -> libpython3.11, _json.cpython-311-x86_64-linux-gnu.so -> _json
    return base.split(".so")[0].split(".cpython")[0] or "unknown"


def parse(lines) -> collections.Counter:
    """Counts of samples per group from `perf script -F ip,sym,dso` (`ip sym (dso)` per line)."""
    counts: collections.Counter = collections.Counter()
    for line in lines:
        _ip, _, line = line.strip().partition(" ")
        if not line:
            continue
        sym, _, dso = line.rpartition(" (")
        if not _:
            sym, dso = line, ""
        counts[group_of(dso.rstrip(")"), sym.strip())] += 1
    return counts


def table(counts: collections.Counter, cpu_per_call: float | None, top: int) -> list[str]:
    total = sum(counts.values())
    out = ["| where | share of samples | CPU-ms per call |", "|---|---|---|"]
    rest = 0
    for i, (name, n) in enumerate(counts.most_common()):
        if i >= top:
            rest += n
            continue
        ms = f"{n / total * cpu_per_call * 1000:.1f}" if cpu_per_call else "n/a"
        out.append(f"| {name} | {n / total * 100:.1f} % | {ms} |")
    if rest:
        ms = f"{rest / total * cpu_per_call * 1000:.1f}" if cpu_per_call else "n/a"
        out.append(f"| everything else | {rest / total * 100:.1f} % | {ms} |")
    out.append(f"\n{total} samples")
    return out


# `     12,345      context-switches      #  ...` (counts may carry thousands separators).
STAT_LINE = re.compile(r"^\s*([0-9][0-9,.]*)\s+(?:msec\s+)?([a-z-]+)")


def stat_per_call(lines, calls: int) -> list[str]:
    """Context switches and migrations per call from `perf stat` output."""
    out = []
    for line in lines:
        m = STAT_LINE.match(line)
        if m and m.group(2) in ("context-switches", "cpu-migrations") and calls > 0:
            count = float(m.group(1).replace(",", ""))
            out.append(f"{m.group(2)}: {count:.0f} ({count / calls:.0f} per call)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--cpu-per-call", type=float)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--stat", help="perf stat output of the same window")
    p.add_argument("--calls", type=int, default=0, help="calls completed in that window")
    a = p.parse_args()
    script = subprocess.run(
        ["perf", "script", "-i", a.data, "-F", "ip,sym,dso"], capture_output=True, text=True, check=False
    )
    if script.returncode != 0:
        sys.exit(f"perf script failed: {script.stderr.strip()}")
    print("\n".join(table(parse(script.stdout.splitlines()), a.cpu_per_call, a.top)))
    if a.stat:
        try:
            with open(a.stat) as f:
                print("\n".join(stat_per_call(f, a.calls)))
        except OSError as e:
            print(f"no perf stat output: {e}")


if __name__ == "__main__":
    main()
