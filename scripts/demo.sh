#!/usr/bin/env bash
# One demo call: starts the provider doubles (cxb-sim on 127.0.0.1:9100, where assets/bots/demo.json
# points), starts the worker on its embedded default if none is listening on :8080, dials one
# 3-turn call (the first answer comes from the demo knowledge base, assets/knowledge/demo, through
# search_knowledge), with a barge-in and end_call, then prints the transcript and where the result went.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin cxb-core --bin cxb-sim >/dev/null 2>&1 || cargo build --release --bin cxb-core --bin cxb-sim
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

if ! curl -sf http://127.0.0.1:9100/sim/health >/dev/null 2>&1; then
  target/release/cxb-sim serve --listen 127.0.0.1:9100 --script assets/sim/script-demo.json >/tmp/cxb-demo-sim.log 2>&1 &
  PIDS+=($!)
fi
if ! curl -sf http://127.0.0.1:8080/health >/dev/null 2>&1; then
  echo "starting the worker on its embedded default (bots: assets/bots, results: data/results)"
  LISTEN_ADDR=127.0.0.1:8080 target/release/cxb-core >/tmp/cxb-demo-worker.log 2>&1 &
  PIDS+=($!)
fi
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:8080/health >/dev/null 2>&1 && curl -sf http://127.0.0.1:9100/sim/health >/dev/null 2>&1 && break
  sleep 0.1
done
mkdir -p data/results
before=$(date +%s)
echo "dialling ws://127.0.0.1:8080/ws/demo (about 25 s of real-time audio)..."
target/release/cxb-sim dial --url ws://127.0.0.1:8080/ws/demo --calls 1 --scenario assets/sim/scenario.json \
  --sim-url http://127.0.0.1:9100 --out /tmp/cxb-demo-dial.json >/dev/null 2>&1 || true
for _ in $(seq 50); do
  newest=$(find data/results -maxdepth 1 -name '*.json' -newermt "@$before" 2>/dev/null | head -1)
  [ -n "$newest" ] && break
  sleep 0.2
done
if [ -z "${newest:-}" ]; then
  echo "no result found in data/results (is the worker using another CXBCORE_DATA_DIR or a CXB API?)"; exit 1
fi
python3 - "$newest" /tmp/cxb-demo-dial.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); d = json.load(open(sys.argv[2]))
print(f"\nsession {r['session_id']}  disconnected_by={r['disconnected_by']}  duration={r['call_duration_seconds']} s")
for l in r["transcript"]:
    cut = "  [interrupted]" if l.get("interrupted") else ""
    print(f"  {l['offset_seconds']:6.2f}s  {l['speaker']:>8}: {l['text']}{cut}")
lat = d.get("latency_ms", {})
print(f"\nresponse latency p50 {lat.get('p50')} ms (end of caller speech -> first bot audio, includes 250 ms of injected provider delay)")
print(f"result written to {sys.argv[1]}")
if r.get("recording_key"):
    print(f"recording: data/{r['recording_key']}  (served at GET /recordings/{r['recording_key']})")
PY
