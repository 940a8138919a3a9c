#!/usr/bin/env bash
# Builds the seed corpus of every fuzz target into fuzz/corpus/<target>/ (files already there are
# kept: a campaign's corpus only grows). The seeds come from tests/fixtures/wire/ (telephony
# messages from the providers' docs and integrations), fuzz/seeds/<target>/ (vendor messages from
# the specs and SDKs) and assets/bots/ — the mapping is fuzz/targets/src/seeds.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p cxb-fuzz-targets --example write_seeds -- fuzz/corpus
