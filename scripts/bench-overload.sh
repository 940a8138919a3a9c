#!/usr/bin/env bash
# Overload benchmark: a worker with MAX_CONCURRENT_CALLS=N is offered N calls at once (alone),
# then 2N calls at once (twice its capacity). The excess must be refused at the upgrade (HTTP 429,
# before any side effect: no config fetched for it) and the accepted calls must not suffer: their
# response latency p99 (dialler-measured, injected provider delays subtracted) stays within 10 %
# of the same calls offered alone.
#
#   scripts/bench-overload.sh [N] [ROUNDS]     default N=20, ROUNDS=3 (alternating alone / 2x)
#
# Environment: BIN_DIR (default target/debug; target/release for production numbers), OUT_DIR
# (default target/bench-overload), SIM_PORT, CORE_PORT, SCENARIO (assets/sim/scenario.json).
# Prints a Markdown table; per-run dial summaries go to $OUT_DIR/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
ROUNDS=${2:-3}
BIN_DIR=${BIN_DIR:-target/debug}
OUT=${OUT_DIR:-target/bench-overload}
SIM_PORT=${SIM_PORT:-19300}; CORE_PORT=${CORE_PORT:-18300}
SIM_HTTP=http://127.0.0.1:$SIM_PORT
CORE_HTTP=http://127.0.0.1:$CORE_PORT
for b in cxb-core cxb-sim; do
  [ -x "$BIN_DIR/$b" ] || { echo "no $BIN_DIR/$b: cargo build --bins (or set BIN_DIR)" >&2; exit 1; }
done
mkdir -p "$OUT"
DATA=$(mktemp -d)
cleanup() {
  for p in "${CORE_PID:-}" "${SIM_PID:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$DATA"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

"$BIN_DIR/cxb-sim" serve --listen 127.0.0.1:$SIM_PORT --llm-ttft-ms 150 --tts-ttfb-ms 100 --stt-latency-ms 80 \
  >"$OUT/sim.log" 2>&1 &
SIM_PID=$!
RUST_LOG=warn LISTEN_ADDR=127.0.0.1:$CORE_PORT CXB_API_CONFIG_URL=$SIM_HTTP/api/v1/config CXBCORE_DATA_DIR="$DATA" \
  MAX_CONCURRENT_CALLS=$N "$BIN_DIR/cxb-core" >"$OUT/core.log" 2>&1 &
CORE_PID=$!
for _ in $(seq 100); do curl -sf $CORE_HTTP/health >/dev/null && curl -sf $SIM_HTTP/sim/settings >/dev/null && break; sleep 0.1; done
curl -sf $CORE_HTTP/health >/dev/null || { echo "worker did not come up; see $OUT/core.log" >&2; exit 1; }

configs() { curl -sf $SIM_HTTP/sim/config-requests | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
# dial <label> <calls>: every call at once.
dial() {
  local before; before=$(configs)
  "$BIN_DIR/cxb-sim" dial --url "ws://127.0.0.1:$CORE_PORT/ws/demo" --calls "$2" --concurrency "$2" --ramp-ms 0 \
    --scenario "${SCENARIO:-assets/sim/scenario.json}" --sim-url $SIM_HTTP --out "$OUT/$1.json" >/dev/null 2>"$OUT/$1.log" || true
  echo $(( $(configs) - before )) >"$OUT/$1.configs"
  # Wait (bounded) until the worker is idle again before the next run.
  for _ in $(seq 300); do
    [ "$(curl -sf $CORE_HTTP/health | python3 -c 'import json,sys; print(json.load(sys.stdin)["worker_calls"])')" = 0 ] && break
    sleep 0.1
  done
}
for r in $(seq "$ROUNDS"); do
  dial "alone-$r" "$N"
  dial "double-$r" "$((N * 2))"
done

python3 - "$OUT" "$N" "$ROUNDS" <<'PY'
import json, sys
out, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
print(f"| offered (capacity {n}) | round | completed | refused 429 | other failures | configs fetched | latency − injected p50 / p99 (ms) |")
print("|---|---|---|---|---|---|---|")
p99 = {"alone": [], "double": []}
for r in range(1, rounds + 1):
    for kind, offered in (("alone", n), ("double", 2 * n)):
        s = json.load(open(f"{out}/{kind}-{r}.json"))
        reasons = s.get("failure_reasons", {})
        refused = sum(v for k, v in reasons.items() if k.startswith("refused:429"))
        other = s["failed"] - refused
        cfg = open(f"{out}/{kind}-{r}.configs").read().strip()
        lat = s["latency_minus_injected_ms"]
        p99[kind].append(lat["p99"])
        print(f"| {offered} | {r} | {s['completed']} | {refused} | {other} | {cfg} | {lat['p50']:.0f} / {lat['p99']:.0f} |")
med = {k: sorted(v)[len(v) // 2] for k, v in p99.items()}
print()
print(f"median p99 over {rounds} rounds: alone {med['alone']:.0f} ms, 2x offered {med['double']:.0f} ms "
      f"({(med['double'] / med['alone'] - 1) * 100:+.1f} %)")
PY
