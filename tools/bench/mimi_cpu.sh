#!/usr/bin/env bash
# Full-size Mimi (random weights, f32, CPU), streaming one 80 ms frame encode + decode:
# moshi-rs and the PyTorch reference on the very same weights, in the same run.
#
#   tools/bench/mimi_cpu.sh            # needs a reference venv, see below
#
# PY: a Python with the reference (python3.11 -m venv .venv-ref &&
#     .venv-ref/bin/pip install -r tools/golden/requirements.txt)
# WEIGHTS: where the reference saves its random full-size weights (385 MB; made once).
# FRAMES: frames timed per run (after 5 warm-up frames).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv-ref/bin/python}
WEIGHTS=${WEIGHTS:-/tmp/mimi_full_random.safetensors}
FRAMES=${FRAMES:-50}
export NO_TORCH_COMPILE=1
if [ ! -f "$WEIGHTS" ]; then
  "$PY" tools/golden/bench_reference.py --save-weights "$WEIGHTS" --frames 1 --warmup 0 >/dev/null
fi
cargo build --release -q -p moshi-rs
out=$(mktemp -d)
for threads in 1 2; do
  "$PY" tools/golden/bench_reference.py --weights "$WEIGHTS" --threads "$threads" --frames "$FRAMES" > "$out/ref$threads.json"
  RAYON_NUM_THREADS=$threads ./target/release/moshi-rs codec bench --model "$WEIGHTS" --frames "$FRAMES" > "$out/rs$threads.json"
done
python3 - "$out" <<'PY'
import json, sys, os
d = sys.argv[1]
print(f"{'threads':>7} {'impl':>10} {'encode':>8} {'decode':>8} {'total':>8} {'p90':>8}  (ms per 80 ms frame, median)")
for t in (1, 2):
    r = json.load(open(os.path.join(d, f"ref{t}.json"))); m = json.load(open(os.path.join(d, f"rs{t}.json")))
    print(f"{t:>7} {'reference':>10} {r['encode_ms_median']:8.1f} {r['decode_ms_median']:8.1f} {r['total_ms_median']:8.1f} {r.get('total_ms_p90', r.get('p90', float('nan'))):8.1f}")
    print(f"{t:>7} {'moshi-rs':>10} {m['encode_ms_median']:8.1f} {m['decode_ms_median']:8.1f} {m['total_ms_median']:8.1f} {m['total_ms_p90']:8.1f}")
    print(f"{t:>7} {'ratio':>10} {r['encode_ms_median']/m['encode_ms_median']:7.2f}x {r['decode_ms_median']/m['decode_ms_median']:7.2f}x {r['total_ms_median']/m['total_ms_median']:7.2f}x")
PY
