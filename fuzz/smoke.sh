#!/usr/bin/env bash
# CI smoke for the fuzz targets (stable Rust; reuses the workspace build): every target replays its
# seed corpus, then runs mutated inputs for FUZZ_SMOKE_SECS seconds (default 1.5, so the whole run
# stays under a minute). `--workspace` resolves features as the workspace build does, so nothing
# is rebuilt after it. Why not cargo-fuzz in CI: docs/reliability.md, "Fuzzing".
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SMOKE_SECS="${FUZZ_SMOKE_SECS:-1.5}" cargo test -q --workspace --test smoke -- --nocapture --test-threads=1
