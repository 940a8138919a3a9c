#!/usr/bin/env bash
# Load benchmark: cxb-sim dials N concurrent 3-turn calls (barge-in + end_call) at the worker
# and we measure the worker's CPU-seconds per call-minute, RSS per call and response latency
# minus the injected provider delays.
#
#   scripts/bench-load.sh [levels...]        default levels: 1 10 100 500
#
# Needs a release build (done here). Prints a Markdown table and writes target/bench/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
LEVELS=("${@:-1 10 100 500}")
[ $# -eq 0 ] && LEVELS=(1 10 100 500)
OUT=target/bench
mkdir -p "$OUT"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin cxb-core --bin cxb-sim >/dev/null
ulimit -n 65536 2>/dev/null || true

SIM_PORT=19100; CORE_PORT=18080
DATA=$(mktemp -d)
cleanup() { kill "${SIM_PID:-}" "${CORE_PID:-}" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT

target/release/cxb-sim serve --listen 127.0.0.1:$SIM_PORT --llm-ttft-ms 150 --tts-ttfb-ms 100 --stt-latency-ms 80 >"$OUT/sim.log" 2>&1 &
SIM_PID=$!
RUST_LOG=warn LISTEN_ADDR=127.0.0.1:$CORE_PORT CXB_API_CONFIG_URL=http://127.0.0.1:$SIM_PORT/api/v1/config \
  CXBCORE_DATA_DIR="$DATA" MAX_CONCURRENT_CALLS=2000 target/release/cxb-core >"$OUT/core.log" 2>&1 &
CORE_PID=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:$CORE_PORT/health >/dev/null && break; sleep 0.1; done

ticks() { awk '{print $14+$15}' /proc/$CORE_PID/stat; }
rss_kb() { awk '/VmRSS/{print $2}' /proc/$CORE_PID/status; }
HZ=$(getconf CLK_TCK)

echo "| concurrent calls | completed | failed | worker CPU-s per call-minute | worker RSS (MB) | RSS per call (MB) | latency p50 / p95 / p99 (ms) | minus injected p50 / p95 / p99 (ms) | opening after answer minus TTS TTFB p50 / p99 (ms) |"
echo "|---|---|---|---|---|---|---|---|---|"
BASE_RSS=$(rss_kb)
for n in "${LEVELS[@]}"; do
  t0=$(ticks)
  peak=0
  ( while kill -0 $CORE_PID 2>/dev/null; do r=$(rss_kb); echo "$r"; sleep 0.5; done ) >"$OUT/rss-$n.txt" &
  SAMPLER=$!
  target/release/cxb-sim dial --url ws://127.0.0.1:$CORE_PORT/ws/demo --calls "$n" --concurrency "$n" \
    --ramp-ms 5 --scenario assets/sim/scenario.json --sim-url http://127.0.0.1:$SIM_PORT --out "$OUT/dial-$n.json" >/dev/null 2>"$OUT/dial-$n.log" || true
  kill $SAMPLER 2>/dev/null || true
  t1=$(ticks)
  python3 - "$OUT/dial-$n.json" "$t0" "$t1" "$HZ" "$BASE_RSS" "$OUT/rss-$n.txt" "$n" <<'PY'
import json, sys
summary, t0, t1, hz, base, rssf, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], int(sys.argv[7])
s = json.load(open(summary))
cpu = (t1 - t0) / hz
call_minutes = s.get("call_seconds_total", s.get("wall_secs", 0) * s["completed"]) / 60.0
rss = [int(x) for x in open(rssf).read().split() if x.strip().isdigit()]
peak = max(rss) if rss else base
lat, adj = s["latency_ms"], s["latency_minus_injected_ms"]
per_call = (peak - base) / 1024 / max(n, 1)
op = s.get("opening_minus_tts_ttfb_ms") or {}
opening = f"{op['p50']:.0f} / {op['p99']:.0f}" if op.get("p50") is not None else "n/a"
print(f"| {n} | {s['completed']} | {s['failed']} | {cpu / max(call_minutes, 1e-9):.4f} | {peak/1024:.1f} | {per_call:.2f} | {lat['p50']:.0f} / {lat['p95']:.0f} / {lat['p99']:.0f} | {adj['p50']:.0f} / {adj['p95']:.0f} / {adj['p99']:.0f} | {opening} |")
if s["failed"]:
    print("  failures:", s["failure_reasons"], file=sys.stderr)
PY
  sleep 2
done
curl -s http://127.0.0.1:$CORE_PORT/metrics >"$OUT/metrics.txt" || true
python3 - "$OUT/metrics.txt" <<'PY'
import sys, re
b = {}
for line in open(sys.argv[1]):
    m = re.match(r'cxb_result_persist_seconds_bucket\{le="([^"]+)"\} (\d+)', line)
    if m:
        b[m.group(1)] = int(m.group(2))
if b:
    total = b.get("+Inf", 0)
    within = b.get("0.005", 0)
    print(f"\nresult persistence at call teardown (fsync'd): {within}/{total} = {100*within/max(total,1):.1f} % within 5 ms; "
          f"{b.get('0.01',0)}/{total} within 10 ms")
PY
echo
echo "VAD end-of-speech hangover (stop_secs) of the benchmark bot: 0.5 s; injected delays: LLM TTFT 150 ms + TTS TTFB 100 ms (subtracted); STT endpointing 200 ms + 80 ms (overlaps the hangover)."
