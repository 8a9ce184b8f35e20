#!/usr/bin/env bash
# The Moshi LM streaming step on CPU, batch 1: full width (the 7B's dims), 2 temporal layers (of 32),
# the full 6-layer depformer, random weights; moshi-rs and the PyTorch reference in the same run,
# f32 and bf16, with the per-layer / per-depformer-step breakdown.
#
#   PY=.venv-ref/bin/python tools/bench/lm_cpu.sh
#
# PY: a Python with the reference (python3.11 -m venv .venv-ref &&
#     .venv-ref/bin/pip install -r tools/golden/requirements.txt)
# STEPS: steps timed per run (after 3 warm-up steps). THREADS: threads for both (default 2).
# DTYPES: default "f32 bf16".
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv-ref/bin/python}
STEPS=${STEPS:-20}
THREADS=${THREADS:-2}
DTYPES=${DTYPES:-f32 bf16}
export NO_TORCH_COMPILE=1
cargo build --release -q -p moshi-rs
out=$(mktemp -d)
for dt in $DTYPES; do
  "$PY" tools/golden/bench_reference_lm.py --threads "$THREADS" --steps "$STEPS" --dtype "$dt" | tail -1 > "$out/ref-$dt.json"
  RAYON_NUM_THREADS=$THREADS ./target/release/moshi-rs lm bench --steps "$STEPS" --dtype "$dt" > "$out/rs-$dt.json"
done
python3 - "$out" $DTYPES <<'PY'
import json, sys, os
d = sys.argv[1]
print(f"{'dtype':>5} {'impl':>10} {'step':>8} {'layer':>8} {'emb+heads':>9} {'dep/step':>8} {'dep all':>8}   (ms, medians; layer = one temporal layer)")
for dt in sys.argv[2:]:
    r = json.load(open(os.path.join(d, f"ref-{dt}.json"))); m = json.load(open(os.path.join(d, f"rs-{dt}.json")))
    row = lambda x: (x["step_ms_median"], sorted(x["temporal_layer_ms_median"])[len(x["temporal_layer_ms_median"]) // 2],
                     x["temporal_embed_and_heads_ms_median"], sorted(x["depformer_step_ms_median"])[4], x["depformer_total_ms"])
    a, b = row(r), row(m)
    print(f"{dt:>5} {'reference':>10} " + " ".join(f"{v:8.1f}" for v in a))
    print(f"{dt:>5} {'moshi-rs':>10} " + " ".join(f"{v:8.1f}" for v in b))
    print(f"{dt:>5} {'ratio':>10} " + " ".join(f"{x / y:7.2f}x" for x, y in zip(a, b)))
    print(f"{dt:>5} 7B estimate: reference {a[0] + 30 * a[1]:.0f} ms/step, moshi-rs {b[0] + 30 * b[1]:.0f} ms/step (step + 30 more layers)")
PY
