#!/usr/bin/env bash
# cxb-core and a Pipecat bot side by side: the same calls, the same provider doubles, one table.
#
#   bench/compare.sh [levels...]        default levels: 10 20 50 100
#
# Starts `cxb-sim serve` once (Deepgram, OpenAI and Cartesia doubles with injected delays, and the
# fake CXB API that serves both stacks the same bot config), then at each level runs both stacks,
# each in a fresh process, one after the other, alternating which goes first (cxb-core first at
# the 1st, 3rd... level, Pipecat first at the 2nd, 4th...). `cxb-sim dial --protocol exotel`
# places N concurrent 3-turn calls (real-time 20 ms caller audio, a barge-in, `end_call`) at each.
# Per run: the server process's CPU (utime+stime+cutime+cstime from /proc/<pid>/stat, before the
# first call and after the last result), its peak RSS (VmHWM) over its idle RSS, calls
# completed/failed, and the dialler's reply latency minus the injected provider delays.
# Pipecat is not run past the first level where it fails more than 10 % of its calls.
#
# Both stacks speak Exotel (8 kHz PCM16, JSON + base64 media, bot audio in 3.2 KB chunks):
# cxb-core on its /exotel/{bot} route, Pipecat through its ExotelFrameSerializer. The same
# protocol means the same dialler code, the same caller bytes and the same chunking on both
# sides. CORE_ROUTE=dialler runs cxb-core over the dialler protocol instead (20 ms reverse-media,
# as scripts/bench-load.sh does).
#
# The Pipecat bot (bench/pipecat/bot.py) runs in its own venv, bench/pipecat/.venv, created and
# filled from bench/pipecat/requirements.txt on first use (and again when that file changes).
#
# Environment:
#   SKIP_BUILD=1          do not run `cargo build --release` first
#   BIN_DIR               release binaries (default: $CARGO_TARGET_DIR/release, else target/release)
#   OUT_DIR               where rows.jsonl, dial-*.json and logs go (default target/bench/compare)
#   CORE_ROUTE            exotel (default) or dialler
#   SCENARIO              the dialler's call script (default assets/sim/scenario.json)
#   RAMP_MS               delay between call starts (default 5)
#   PIPECAT_FAIL_PCT      Pipecat stops after a level with more failed calls than this (10)
#   PYTHON                interpreter for the venv (default python3; Pipecat needs >= 3.10)
#   AUTOGROUP_NICE        weight of the benchmark's scheduler session (default -10; empty: off),
#                         as in scripts/bench-load.sh: on a shared machine another session's
#                         build otherwise takes half the CPU whatever nice says
#   PROFILE=1             also sample each server with `perf record` over the measured window and
#                         print where its CPU went (bench/perf_breakdown.py; perf-*.data in
#                         OUT_DIR) and its context switches per call (`perf stat`). Sampling costs the server a little CPU: take the table's
#                         numbers from runs without it.
#   PERF_HZ               perf's sampling rate (default 999)
#   SIM_PORT, CORE_PORT, PIPECAT_PORT   (19400, 18480, 18490)
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/.."
VENV=bench/pipecat/.venv
REQS=bench/pipecat/requirements.txt

# Build and install first, outside the weighted session (they would take the machine from others).
if [ -z "${BENCH_IN_OWN_SESSION:-}" ]; then
  [ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin cxb-core --bin cxb-sim >/dev/null
  PY=${PYTHON:-python3}
  "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "Pipecat needs Python >= 3.10; set PYTHON" >&2; exit 1; }
  want=$(sha256sum "$REQS" | cut -d' ' -f1)
  if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    echo "installing $REQS into $VENV ..." >&2
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQS" >&2
    echo "$want" >"$VENV/.requirements.sha256"
  fi
  AUTOGROUP_NICE=${AUTOGROUP_NICE--10}
  if [ -n "$AUTOGROUP_NICE" ] && [ -w /proc/self/autogroup ] && command -v setsid >/dev/null; then
    SKIP_BUILD=1 BENCH_IN_OWN_SESSION=1 AUTOGROUP_NICE=$AUTOGROUP_NICE exec setsid --wait "$SELF" "$@"
  fi
elif ! echo "$AUTOGROUP_NICE" 2>/dev/null >/proc/self/autogroup; then
  echo "cannot set the session weight (AUTOGROUP_NICE=$AUTOGROUP_NICE needs CAP_SYS_NICE); running without" >&2
fi

if [ $# -gt 0 ]; then LEVELS=("$@"); else LEVELS=(10 20 50 100); fi
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
CORE_BIN=$BIN_DIR/cxb-core
SIM_BIN=$BIN_DIR/cxb-sim
OUT=${OUT_DIR:-${CARGO_TARGET_DIR:-target}/bench/compare}
CORE_ROUTE=${CORE_ROUTE:-exotel}
SCENARIO=${SCENARIO:-assets/sim/scenario.json}
RAMP_MS=${RAMP_MS:-5}
PIPECAT_FAIL_PCT=${PIPECAT_FAIL_PCT:-10}
SIM_PORT=${SIM_PORT:-19400}; CORE_PORT=${CORE_PORT:-18480}; PIPECAT_PORT=${PIPECAT_PORT:-18490}
SIM_HTTP=http://127.0.0.1:$SIM_PORT
case "$CORE_ROUTE" in
  exotel) CORE_DIAL=(--protocol exotel --url "ws://127.0.0.1:$CORE_PORT/exotel/demo") ;;
  dialler) CORE_DIAL=(--url "ws://127.0.0.1:$CORE_PORT/ws/demo") ;;
  *) echo "CORE_ROUTE must be exotel or dialler" >&2; exit 1 ;;
esac
PIPECAT_DIAL=(--protocol exotel --url "ws://127.0.0.1:$PIPECAT_PORT/exotel/demo")
if [ -n "${PROFILE:-}" ] && ! command -v perf >/dev/null; then echo "PROFILE=1 needs perf" >&2; exit 1; fi
for b in "$CORE_BIN" "$SIM_BIN" "$VENV/bin/python"; do
  [ -x "$b" ] || { echo "no executable $b (build first, or set BIN_DIR)" >&2; exit 1; }
done
mkdir -p "$OUT"
ROWS=$OUT/rows.jsonl
: >"$ROWS"
rm -f "$OUT"/perf-*
ulimit -n 65536 2>/dev/null || true
DATA=$(mktemp -d)
SERVER_PID=
PERF_PID=
STAT_PID=
cleanup() {
  for p in "${PERF_PID:-}" "${STAT_PID:-}" "${SERVER_PID:-}" "${SIM_PID:-}"; do
    if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi
  done
  rm -rf "$DATA"
}
trap cleanup EXIT

"$SIM_BIN" serve --threads 1 --listen "127.0.0.1:$SIM_PORT" \
  --llm-ttft-ms 150 --tts-ttfb-ms 100 --stt-latency-ms 80 >"$OUT/sim.log" 2>&1 &
SIM_PID=$!
for _ in $(seq 100); do curl -sf "$SIM_HTTP/sim/health" >/dev/null && break; sleep 0.1; done
curl -sf "$SIM_HTTP/sim/health" >/dev/null || { echo "cxb-sim did not come up; see $OUT/sim.log" >&2; exit 1; }

HZ=$(getconf CLK_TCK)
# utime + stime + cutime + cstime: the process and the children it waited for.
ticks() { awk '{print $14+$15+$16+$17}' "/proc/$1/stat"; }
status_kb() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
# last_row KEY DEFAULT: a field of the newest row (DEFAULT when absent or null).
last_row() { python3 -c 'import json,sys; v=json.loads(open(sys.argv[1]).read().splitlines()[-1]).get(sys.argv[2]); print(sys.argv[3] if v is None else v)' "$ROWS" "$1" "$2"; }
results_stored() { curl -sf "$SIM_HTTP/sim/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["results_stored"])'; }

# start_server STACK LOG: a fresh server process in SERVER_PID, serving once /health answers.
start_server() {
  local url
  case "$1" in
    cxb-core)
      RUST_LOG=warn LISTEN_ADDR=127.0.0.1:$CORE_PORT CXB_API_CONFIG_URL=$SIM_HTTP/api/v1/config \
        CXBCORE_DATA_DIR="$DATA" MAX_CONCURRENT_CALLS=2000 CXBCORE_DRAIN_SECS=1 "$CORE_BIN" >"$2" 2>&1 &
      url=http://127.0.0.1:$CORE_PORT/health ;;
    pipecat)
      CXB_API_CONFIG_URL=$SIM_HTTP/api/v1/config "$VENV/bin/python" bench/pipecat/bot.py \
        --port "$PIPECAT_PORT" >"$2" 2>&1 &
      url=http://127.0.0.1:$PIPECAT_PORT/health ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 300); do curl -sf "$url" >/dev/null && return 0; sleep 0.1; done
  echo "$1 did not come up; see $2" >&2
  return 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

# run STACK N: one fresh server, N calls, one row.
run() {
  local stack=$1 n=$2 dial log="$OUT/$1-$2.log" summary="$OUT/dial-$1-$2.json"
  if [ "$stack" = cxb-core ]; then dial=("${CORE_DIAL[@]}"); else dial=("${PIPECAT_DIAL[@]}"); fi
  curl -sf -X POST "$SIM_HTTP/sim/reset" >/dev/null || true
  start_server "$stack" "$log"
  sleep 1 # let start-up work settle before the idle reading
  local idle_kb r0 t0 b0 s0 w0 t1 b1 s1 w1 peak_kb
  idle_kb=$(status_kb "$SERVER_PID" VmRSS); r0=$(results_stored)
  if [ -n "${PROFILE:-}" ]; then
    perf record -q -F "${PERF_HZ:-999}" -p "$SERVER_PID" -o "$OUT/perf-$stack-$n.data" 2>"$OUT/perf-$stack-$n.log" &
    PERF_PID=$!
    perf stat -e task-clock,context-switches,cpu-migrations -p "$SERVER_PID" -o "$OUT/perf-$stack-$n.stat" &
    STAT_PID=$!
  fi
  t0=$(ticks "$SERVER_PID"); s0=$(ticks "$SIM_PID"); b0=$(busy); w0=$(date +%s.%N)
  "$SIM_BIN" dial --threads 1 "${dial[@]}" --calls "$n" --concurrency "$n" --ramp-ms "$RAMP_MS" \
    --scenario "$SCENARIO" --sim-url "$SIM_HTTP" --out "$summary" >/dev/null 2>"$OUT/dial-$stack-$n.log" || true
  if [ "$stack" = cxb-core ]; then
    # cxb-core's per-call work ends with the result posted through its outbox: count it in.
    local done_calls
    done_calls=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("completed", 0))' "$summary" 2>/dev/null || echo 0)
    for _ in $(seq 300); do [ "$(results_stored)" -ge $((r0 + done_calls)) ] && break; sleep 0.1; done
  else
    sleep 1
  fi
  t1=$(ticks "$SERVER_PID"); s1=$(ticks "$SIM_PID"); b1=$(busy); w1=$(date +%s.%N)
  peak_kb=$(status_kb "$SERVER_PID" VmHWM)
  if [ -n "$PERF_PID" ]; then
    kill -INT "$PERF_PID" "$STAT_PID"; wait "$PERF_PID" "$STAT_PID" || true; PERF_PID=; STAT_PID=
  fi
  stop_server
  python3 bench/compare_report.py row --stack "$stack" --calls "$n" --summary "$summary" \
    --ticks0 "$t0" --ticks1 "$t1" --hz "$HZ" --idle-kb "$idle_kb" --peak-kb "$peak_kb" \
    --busy $((b1 - b0 - (s1 - s0))) --wall "$(awk -v a="$w0" -v b="$w1" 'BEGIN {print b - a}')" >>"$ROWS"
  if [ -n "${PROFILE:-}" ]; then
    local per_call
    per_call=$(last_row cpu_per_call "")
    python3 bench/perf_breakdown.py "$OUT/perf-$stack-$n.data" ${per_call:+--cpu-per-call "$per_call"} \
      --stat "$OUT/perf-$stack-$n.stat" --calls "$(last_row completed 0)" \
      >"$OUT/perf-$stack-$n.md" 2>&1 || true
  fi
}

echo "scheduling: session $(cat /proc/self/autogroup 2>/dev/null || echo '(no autogroup)'); cxb-core route: $CORE_ROUTE; $(nproc) CPUs" >&2
PIPECAT_STOPPED=
for i in "${!LEVELS[@]}"; do
  n=${LEVELS[$i]}
  if [ $((i % 2)) -eq 0 ]; then ORDER=(cxb-core pipecat); else ORDER=(pipecat cxb-core); fi
  for stack in "${ORDER[@]}"; do
    if [ "$stack" = pipecat ] && [ -n "$PIPECAT_STOPPED" ]; then
      echo "{\"stack\":\"pipecat\",\"calls\":$n,\"skipped\":\"not run: failed > $PIPECAT_FAIL_PCT % at $PIPECAT_STOPPED\"}" >>"$ROWS"
      continue
    fi
    run "$stack" "$n"
    if [ "$stack" = pipecat ]; then
      failed=$(last_row failed "$n")
      [ $((failed * 100)) -gt $((n * PIPECAT_FAIL_PCT)) ] && PIPECAT_STOPPED=$n
    fi
    sleep 2
  done
done

echo
python3 bench/compare_report.py table "$ROWS"
echo
echo "Same calls for both: $(basename "$SCENARIO"), caller audio in real time (20 ms frames), calls started ${RAMP_MS} ms apart;"
echo "provider doubles with LLM TTFT 150 ms, TTS TTFB 100 ms (subtracted from the latency), STT 80 ms after a 200 ms endpoint."
echo "cxb-core over $CORE_ROUTE, Pipecat over Exotel (ExotelFrameSerializer), 8 kHz. Rows: $ROWS."
if [ -n "${PROFILE:-}" ]; then
  for f in "$OUT"/perf-*.md; do echo; echo "Where the CPU went, $(basename "$f" .md) (self time; sampled, so not the table's run):"; cat "$f"; done
fi
