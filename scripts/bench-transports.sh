#!/usr/bin/env bash
# Per-protocol load benchmark: cxb-sim dials N concurrent 3-turn calls (barge-in + end_call) over
# each telephony transport (dialler, Exotel 8 kHz and 24 kHz, Twilio, Telnyx, Plivo, Vonage) and
# we measure the worker's CPU-seconds per call-minute and response latency (raw and minus the
# injected provider delays).
#
#   scripts/bench-transports.sh [calls] [protocols...]     default: 100 calls, every protocol
#
# Needs a release build (done here). Prints a Markdown table and writes target/bench/transports-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
shift || true
# name route protocol [extra dial args]
ROWS=("dialler ws dialler" "exotel exotel exotel" "exotel-24k exotel exotel --sample-rate 24000" "twilio twilio twilio"
  "telnyx telnyx telnyx" "plivo plivo plivo" "vonage vonage vonage")
if [ $# -gt 0 ]; then
  WANT=" $* "
  SEL=()
  for r in "${ROWS[@]}"; do
    name=${r%% *}
    [[ "$WANT" == *" $name "* ]] && SEL+=("$r")
  done
  ROWS=("${SEL[@]}")
fi
OUT=target/bench
mkdir -p "$OUT"
cargo build --release --bin cxb-core --bin cxb-sim >/dev/null
ulimit -n 65536 2>/dev/null || true

SIM_PORT=${SIM_PORT:-19200}; CORE_PORT=${CORE_PORT:-18180}
DATA=$(mktemp -d)
cleanup() { kill "${SIM_PID:-}" "${CORE_PID:-}" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT

target/release/cxb-sim serve --listen 127.0.0.1:$SIM_PORT --llm-ttft-ms 150 --tts-ttfb-ms 100 --stt-latency-ms 80 \
  >"$OUT/transports-sim.log" 2>&1 &
SIM_PID=$!
RUST_LOG=warn LISTEN_ADDR=127.0.0.1:$CORE_PORT CXB_API_CONFIG_URL=http://127.0.0.1:$SIM_PORT/api/v1/config \
  CXBCORE_DATA_DIR="$DATA" MAX_CONCURRENT_CALLS=2000 target/release/cxb-core >"$OUT/transports-core.log" 2>&1 &
CORE_PID=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:$CORE_PORT/health >/dev/null && break; sleep 0.1; done

ticks() { awk '{print $14+$15}' /proc/$CORE_PID/stat; }
HZ=$(getconf CLK_TCK)
idle() { for _ in $(seq 100); do
  curl -sf http://127.0.0.1:$CORE_PORT/health | grep -q '"worker_calls":0' && return; sleep 0.2; done; }

echo "| protocol | calls | completed | failed | violations | worker CPU-s per call-minute | latency p50 / p95 / p99 (ms) | minus injected p50 / p95 / p99 (ms) | barge-in stop p50 (ms) |"
echo "|---|---|---|---|---|---|---|---|---|"
for row in "${ROWS[@]}"; do
  read -r name route proto extra <<<"$row"
  idle
  t0=$(ticks)
  # shellcheck disable=SC2086
  target/release/cxb-sim dial --protocol "$proto" --url "ws://127.0.0.1:$CORE_PORT/$route/demo" --calls "$N" --concurrency "$N" \
    --ramp-ms 5 --scenario assets/sim/scenario.json --sim-url http://127.0.0.1:$SIM_PORT \
    --out "$OUT/transports-$name.json" ${extra:-} >/dev/null 2>"$OUT/transports-$name.log" || true
  idle
  t1=$(ticks)
  python3 - "$OUT/transports-$name.json" "$t0" "$t1" "$HZ" "$name" <<'PY'
import json, sys
summary, t0, t1, hz, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = json.load(open(summary))
cpu = (t1 - t0) / hz
call_minutes = s["call_seconds_total"] / 60.0
lat, adj, stop = s["latency_ms"], s["latency_minus_injected_ms"], s["barge_in_stop_ms"]
print(f"| {name} | {s['calls']} | {s['completed']} | {s['failed']} | {s['protocol_violations']} | {cpu / max(call_minutes, 1e-9):.4f} | "
      f"{lat['p50']:.0f} / {lat['p95']:.0f} / {lat['p99']:.0f} | {adj['p50']:.0f} / {adj['p95']:.0f} / {adj['p99']:.0f} | {stop['p50']:.0f} |")
if s["failed"] or s["protocol_violations"]:
    print("  failures:", s["failure_reasons"], "violations:", s["protocol_violation_kinds"], file=sys.stderr)
PY
  sleep 2
done
echo
echo "Route per row: ws://127.0.0.1:$CORE_PORT/<protocol>/demo (dialler: /ws/demo). Injected delays: LLM TTFT 150 ms +"
echo "TTS TTFB 100 ms (subtracted); STT endpointing 200 ms + 80 ms (overlap the VAD hangover, not subtracted)."
echo "CPU is the worker process only (utime+stime from /proc), call-minutes are the dialler's connect-to-close times."
