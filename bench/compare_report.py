#!/usr/bin/env python3
"""Rows and the table of bench/compare.sh (standard library only).

    compare_report.py row --stack NAME --calls N --summary dial.json --ticks0 T --ticks1 T
        --hz HZ --idle-kb KB --peak-kb KB --busy TICKS --wall SECS >> rows.jsonl
    compare_report.py table rows.jsonl

`row` turns one run (one stack at one level) into a JSON line: CPU from /proc/<pid>/stat
(utime+stime+cutime+cstime, before and after), the peak RSS (VmHWM) over the idle RSS, and the
dialler's summary (calls completed/failed, call-seconds, latency minus the injected provider
delays, protocol violations). `table` prints one Markdown table of every row, with the ratio of
each stack's CPU per call to cxb-core's at the same level.
"""

import argparse
import json
import sys

CORE = "cxb-core"


def row(a: argparse.Namespace) -> dict:
    out = {"stack": a.stack, "calls": a.calls}
    try:
        with open(a.summary) as f:
            s = json.load(f)
    except (OSError, ValueError) as e:
        out["error"] = f"no dial summary ({e})"
        return out
    cpu = (a.ticks1 - a.ticks0) / a.hz
    completed, failed = int(s.get("completed", 0)), int(s.get("failed", 0))
    call_minutes = float(s.get("call_seconds_total", 0.0)) / 60.0
    lat = s.get("latency_minus_injected_ms") or {}
    opening = s.get("opening_minus_tts_ttfb_ms") or {}
    others = max(0.0, a.busy / a.hz - cpu - float(s.get("dialler_cpu_secs", 0.0)))
    out.update(
        completed=completed,
        failed=failed,
        failure_reasons=s.get("failure_reasons") or {},
        cpu_secs=round(cpu, 3),
        cpu_per_call=cpu / completed if completed else None,
        cpu_per_call_minute=cpu / call_minutes if call_minutes > 0 else None,
        idle_rss_mb=round(a.idle_kb / 1024, 1),
        peak_rss_mb=round(a.peak_kb / 1024, 1),
        rss_per_call_mb=max(0, a.peak_kb - a.idle_kb) / 1024 / max(a.calls, 1),
        latency_count=int(lat.get("count", 0)),
        latency_p50=lat.get("p50"),
        latency_p95=lat.get("p95"),
        latency_p99=lat.get("p99"),
        # Handshake sent -> first audible greeting frame, minus the injected TTS time to first byte.
        opening_p50=opening.get("p50") if opening.get("count") else None,
        opening_p99=opening.get("p99") if opening.get("count") else None,
        protocol_violations=int(s.get("protocol_violations", 0)),
        violation_kinds=s.get("protocol_violation_kinds") or {},
        barge_in_stops=f"{s.get('media_stops', 0)}/{s.get('barge_in_says', 0)}",
        # Bot hang-ups, and those with less than the dialler's minimum of goodbye audio before them.
        bot_hangups=int(s.get("bot_hangups", 0)),
        silent_hangups=int(s.get("silent_bot_hangups", 0)),
        # CPU the rest of the machine used meanwhile (not this stack, not the dialler), in cores.
        other_load_cores=round(others / max(a.wall, 1e-9), 2),
    )
    return out


def fmt(x, spec: str, none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def table(path: str) -> None:
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    core_cpu = {r["calls"]: r.get("cpu_per_call") for r in rows if r["stack"] == CORE}
    print(
        "| stack | calls | completed | failed | CPU-s per call | CPU-s per call-minute | RSS per call (MB) "
        "| latency minus injected p50 / p95 / p99 (ms) | greeting minus TTS TTFB p50 / p99 (ms) "
        "| CPU ratio to cxb-core | goodbyes heard / bot hang-ups | protocol violations | other load (cores) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r or "error" in r:
            why = r.get("skipped") or r.get("error")
            print(f"| {r['stack']} | {r['calls']} | {why} | | | | | | | | | | |")
            continue
        base = core_cpu.get(r["calls"])
        mine = r.get("cpu_per_call")
        ratio = f"{mine / base:.1f}×" if mine and base else "n/a"
        lat = "n/a"
        if r.get("latency_count"):
            lat = " / ".join(fmt(r.get(k), ".0f") for k in ("latency_p50", "latency_p95", "latency_p99"))
        opening = " / ".join(fmt(r.get(k), ".0f") for k in ("opening_p50", "opening_p99"))
        hangups = r.get("bot_hangups", 0)
        goodbyes = f"{hangups - r.get('silent_hangups', 0)} / {hangups}"
        print(
            f"| {r['stack']} | {r['calls']} | {r['completed']} | {r['failed']} | {fmt(mine, '.3f')} "
            f"| {fmt(r.get('cpu_per_call_minute'), '.3f')} | {r['rss_per_call_mb']:.2f} | {lat} | {opening} | {ratio} "
            f"| {goodbyes} | {r['protocol_violations']} | {r['other_load_cores']:.2f} |"
        )
    for r in rows:
        if r.get("failure_reasons"):
            print(f"\n{r['stack']} at {r['calls']}: failures {r['failure_reasons']}", file=sys.stderr)
        if r.get("violation_kinds"):
            print(f"{r['stack']} at {r['calls']}: violations {r['violation_kinds']}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("row")
    r.add_argument("--stack", required=True)
    r.add_argument("--calls", type=int, required=True)
    r.add_argument("--summary", required=True)
    for k in ("ticks0", "ticks1", "hz", "idle-kb", "peak-kb", "busy"):
        r.add_argument(f"--{k}", type=int, required=True)
    r.add_argument("--wall", type=float, required=True)
    t = sub.add_parser("table")
    t.add_argument("rows")
    a = p.parse_args()
    if a.cmd == "row":
        r = row(a)
        print(json.dumps(r))
        print(
            f"{r['stack']} at {r['calls']} calls: {r.get('completed', 0)} completed, {r.get('failed', 0)} failed, "
            f"{r.get('cpu_secs', 'n/a')} CPU-s {r.get('error', '')}",
            file=sys.stderr,
        )
    else:
        table(a.rows)


if __name__ == "__main__":
    main()
