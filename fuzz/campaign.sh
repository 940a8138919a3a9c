#!/usr/bin/env bash
# One libFuzzer campaign: fuzz/campaign.sh <target> [runs] [extra libFuzzer flags...]
# Runs <target> over fuzz/corpus/<target> (seeded first) for [runs] executions (default 10M) on one
# core, with a per-input timeout and memory limit; the log goes to fuzz/logs/<target>.log and the
# final stats line (executions, time, cov/ft) is printed. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
target="$1"; runs="${2:-10000000}"; shift $(( $# > 1 ? 2 : 1 ))
[ -d "fuzz/corpus/$target" ] || bash fuzz/seed.sh >/dev/null
mkdir -p fuzz/logs
start=$(date +%s)
set +e
# No sanitizer by default: the parsers are safe Rust, so ASan finds nothing the panic hook does not,
# at several times the cost per execution; debug assertions (-a) turn arithmetic overflow into a
# crash. FUZZ_BUILD_FLAGS="-s address" for an ASan campaign.
read -ra build_flags <<<"${FUZZ_BUILD_FLAGS:--s none -a}"
cargo +nightly fuzz run "${build_flags[@]}" "$target" "fuzz/corpus/$target" -- \
  -runs="$runs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=65536 \
  -dict=fuzz/fuzz.dict -print_final_stats=1 "$@" >"fuzz/logs/$target.log" 2>&1
rc=$?
set -e
secs=$(( $(date +%s) - start ))
final=$(grep -E '^#[0-9]+[[:space:]]+DONE' "fuzz/logs/$target.log" | tail -1 || true)
execs=$(grep -E '^stat::number_of_executed_units' "fuzz/logs/$target.log" | awk '{print $2}' || true)
echo "$target rc=$rc execs=${execs:-?} secs=$secs ${final}"
exit $rc
