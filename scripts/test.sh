#!/usr/bin/env bash
# The project's test command (README): installs the local peers the tests start (s3s-fs),
# builds the binaries the end-to-end tests launch, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "installing s3s-fs (S3-compatible server used by the recording tests)..."
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi
cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
