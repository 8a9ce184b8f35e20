#!/usr/bin/env bash
# Load figures for docs/serve.md: `moshi-rs loadtest` (in-process server on the embedded tiny model,
# N real-time WebSocket clients over loopback for SECONDS each), one JSON line per N.
#   tools/bench/serve_load.sh            # N = 1 2 4 8 12 16 24, 20 s each
#   NS="1 8" SECONDS_EACH=10 tools/bench/serve_load.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p moshi-rs
for n in ${NS:-1 2 4 8 12 16 24}; do
  RUST_LOG=warn ./target/release/moshi-rs loadtest --conversations "$n" --seconds "${SECONDS_EACH:-20}"
done
