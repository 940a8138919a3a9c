#!/usr/bin/env bash
# The project's test command (README): installs the local peers and artefacts the tests use
# (s3s-fs; LiveKit's FFI library and the turn models, fetched from PyPI with pinned hashes),
# builds the binaries the end-to-end tests launch, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "installing s3s-fs (S3-compatible server used by the recording tests)..."
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi
bash scripts/fetch-livekit-ffi.sh
bash scripts/fetch-models.sh
# The FFI tests must run against the real library, not skip.
export CXB_REQUIRE_LIVEKIT_FFI=1
# One build for binaries and tests: `--tests` unifies dependency features the way `cargo test`
# does, so the test run below reuses these artefacts instead of compiling everything twice.
cargo build --workspace --bins --tests
cargo test --workspace --no-fail-fast "$@"
# Silero VAD and Smart Turn v3 through ONNX Runtime (optional feature; small extra build).
cargo test -p cxb-turn --features onnx "$@"
