#!/usr/bin/env bash
# One device call on the H200 (see docs/benchmarks.md, "How to reproduce"): verify ops and model on CUDA, the full-size
# LM step benchmark, the pipeline benchmark. Expects the CUDA build of moshi-rs at .device/moshi-rs
# (carried: `carry: [".device"]`) and writes every output under $OUT.
#
#   here:   eval "$(tools/device/cuda-toolchain.sh)"
#           CUDA_COMPUTE_CAP=90 CARGO_TARGET_DIR=/work/target-cuda cargo build --release -p moshi-rs --features cuda
#           mkdir -p .device && cp /work/target-cuda/release/moshi-rs .device/ && strip .device/moshi-rs
#   device: bash tools/device/cuda_check.sh
set -uo pipefail
B=${B:-.device/moshi-rs}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -f "$B.gz" ] && gunzip -f "$B.gz"
chmod +x "$B"
nvidia-smi -L
run() { # name, args...
  local name=$1; shift
  local t0=$(date +%s)
  "$B" "$@" > "$OUT/$name.txt" 2>&1
  echo "== $name: rc=$? ($(( $(date +%s) - t0 )) s)"
  grep -E "FAIL|checks passed|checks failed|Error" "$OUT/$name.txt" | head -12
}
run verify_ops verify ops --device cuda
run verify_model_tiny_f32 verify model --model tiny --device cuda --dtype f32
run verify_model_random2_f32 verify model --model random:2 --device cuda --dtype f32 --frames 8
run verify_model_random2_bf16 verify model --model random:2 --device cuda --dtype bf16 --frames 8
run lm_bench_7b_bf16 lm bench --device cuda --dtype bf16 --layers 32 --steps 30 --warmup 5
tail -1 "$OUT/lm_bench_7b_bf16.txt"
run bench_tiny bench --model tiny --device cuda --frames 50 --warmup 5
tail -1 "$OUT/bench_tiny.txt"
